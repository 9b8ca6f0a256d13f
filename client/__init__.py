"""``dgasr-client``: stream audio to a dgasr server and print what it recognises.

Modules: :mod:`client.sources` (file, stdin and microphone audio), :mod:`client.output`
(text, jsonl, srt, vtt and live-caption sinks), :mod:`client.session` (the websocket
conversation and mic reconnects) and :mod:`client.cli` (arguments, exit codes, main).
"""
