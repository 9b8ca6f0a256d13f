"""The caption page in a real Chromium (Debian's, headless) with a fake microphone playing a WAV file.

The page is served by a real dgasr server (tiny-random engine: real segmentation, noise
for text); the tests read the DOM contract (``.final[data-segment]``, one ``.partial``
replaced in place, ``data-speaker`` in a room) and save screenshots under
``test-artifacts/`` (or ``$DGASR_TEST_ARTIFACTS``). Every request the page makes must go
to the server itself: it works offline.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
import srt
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread
from playwright.sync_api import sync_playwright
from wsclient import stream

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DGASR_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
THREE = [0.8, "Welcome to the live caption test.", 1.0, "Every sentence becomes one final.", 1.0,
         "And this is the third one.", 1.5]
WATCH = """
window.__partials = {max: 0, seen: 0};
new MutationObserver(() => {
  const n = document.querySelectorAll('.partial').length;
  window.__partials.max = Math.max(window.__partials.max, n);
  if (n) window.__partials.seen++;
}).observe(document, {childList: true, subtree: true, characterData: true});
"""

SLOW_WORKLET = """
const load = AudioWorklet.prototype.addModule;
AudioWorklet.prototype.addModule = async function (url) {
  await new Promise((r) => setTimeout(r, 2500));
  return load.call(this, url);
};
"""


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


def _browser(p, wav: Path | None = None):
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


def _offline(context, port: int) -> list[str]:
    """Abort every request that does not go to the dgasr server; returns their URLs."""
    foreign: list[str] = []

    def check(route):
        if route.request.url.startswith((f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", check)
    return foreign


def test_the_page_captions_a_fake_microphone_one_final_per_sentence_in_order(server, tmp_path):
    audio, truth = speech_with_pauses(THREE)
    wav = tmp_path / "mic.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p, wav)
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        foreign = _offline(context, server.port)
        page = context.new_page()
        page.add_init_script(WATCH)
        page.goto(f"http://127.0.0.1:{server.port}/?autostart=1&language=en")
        page.wait_for_function("document.querySelectorAll('.final[data-segment]').length >= 3", timeout=90_000)
        page.wait_for_timeout(1500)  # nothing more is said: no fourth final, no partial left over
        finals = page.eval_on_selector_all(".final[data-segment]", "els => els.map(e => [e.dataset.segment, e.textContent])")
        partials = page.evaluate("window.__partials")
        left = page.locator(".partial").count()
        status = page.locator("#status").text_content()
        page.screenshot(path=str(ARTIFACTS / "caption-page.png"))
        with page.expect_download() as download:
            page.click("#downloads button[data-format=srt]")
        cues = list(srt.parse(Path(download.value.path()).read_text()))
        browser.close()
    assert [segment for segment, _ in finals] == ["0", "1", "2"] and len(truth) == 3
    assert all(text.strip() for _, text in finals)
    assert left == 0 and partials["seen"] > 0 and partials["max"] == 1  # one draft at a time, replaced in place
    assert "listening" in status
    assert [c.content for c in cues] == [text for _, text in finals]  # the download holds what was shown
    assert all(c.start < c.end for c in cues) and cues[0].start.total_seconds() >= 0.3
    assert foreign == []


def test_a_slow_page_start_loses_none_of_the_first_sentence(server, tmp_path):
    """The capture worklet takes 2.5 s to load and the server 2 s to answer the preflight (a
    slow network): the microphone opens only once the worklet is ready, and what it captures
    before the socket opens is held and sent first, so the first words are not lost."""
    audio, truth = speech_with_pauses(THREE)
    wav = tmp_path / "mic.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    with sync_playwright() as p:
        browser = _browser(p, wav)
        context = browser.new_context()
        foreign = _offline(context, server.port)
        context.route("**/v1/listen?*", lambda route: (time.sleep(2.0), route.continue_()))
        page = context.new_page()
        page.add_init_script(SLOW_WORKLET)
        page.goto(f"http://127.0.0.1:{server.port}/?autostart=1&language=en")
        page.wait_for_function("document.querySelectorAll('.final[data-segment]').length >= 3", timeout=90_000)
        page.wait_for_timeout(1000)
        segments = page.eval_on_selector_all(".final[data-segment]", "els => els.map(e => e.dataset.segment)")
        with page.expect_download() as download:
            page.click("#downloads button[data-format=srt]")
        cues = list(srt.parse(Path(download.value.path()).read_text()))
        browser.close()
    assert segments == ["0", "1", "2"]
    # the first final starts where the first sentence does (0.8 s into the microphone's audio)
    # and lasts the whole sentence
    assert 0.3 <= cues[0].start.total_seconds() <= truth[0][0] + 0.3
    assert cues[0].end.total_seconds() >= truth[0][1] - 0.3
    assert foreign == []


def test_a_room_view_shows_both_speakers_finals_with_their_labels(server):
    alice, _ = speech_with_pauses([0.3, "Alice speaks first today.", 0.9, "Then Alice again.", 0.6])
    bob, _ = speech_with_pauses([1.2, "Bob answers her.", 0.8], voice="en+m3")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p)
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        foreign = _offline(context, server.port)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/?room=weekly")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('room weekly')")

        def speak() -> None:
            async def both():
                return await asyncio.gather(stream(server.url, alice, query="room=weekly&speaker=alice", speed=2.0),
                                            stream(server.url, bob, query="room=weekly&speaker=bob", speed=2.0))
            spoken.extend(asyncio.run(both()))

        spoken: list = []
        speaker = threading.Thread(target=speak)
        speaker.start()
        speaker.join(60)
        want = sum(1 for log in spoken for f in log.of("final") if f.text)
        page.wait_for_function(f"document.querySelectorAll('.final[data-speaker]').length >= {want}", timeout=30_000)
        shown = page.eval_on_selector_all(
            ".final[data-speaker]", "els => els.map(e => [e.dataset.speaker, e.dataset.segment, e.textContent])")
        page.screenshot(path=str(ARTIFACTS / "room-view.png"))
        browser.close()
    assert {s for s, _, _ in shown} == {"alice", "bob"}
    assert [seg for s, seg, _ in shown if s == "alice"] == ["0", "1"] and [seg for s, seg, _ in shown if s == "bob"] == ["0"]
    for speaker_name, _, text in shown:
        assert text.startswith(speaker_name)  # the label leads the line
    assert foreign == []


def test_the_page_says_when_the_token_is_wrong_and_keeps_retrying(tiny_engine):
    srv = ServerThread(tiny_engine, auth_token="right-token")
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{srv.port}/?room=locked&token=wrong-token")
            page.wait_for_function("document.getElementById('status').textContent.includes('reconnecting')")
            wrong = page.locator("#status").text_content()
            page.goto(f"http://127.0.0.1:{srv.port}/?room=locked&token=right-token")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('room locked')")
            browser.close()
    finally:
        srv.close()
    assert "token" in wrong and "reconnecting in 1 s" in wrong
