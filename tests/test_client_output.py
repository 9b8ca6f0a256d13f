"""Output formats of dgasr-client: text, jsonl, srt, vtt and live captions."""

from __future__ import annotations

import io
import re

from client.output import (
    LiveSink,
    SrtSink,
    TextSink,
    VttSink,
    make_sink,
    split_cues,
    wrap_text,
)
from server.wire.v1 import (
    Closed,
    Error,
    Final,
    Partial,
    Ready,
    SpeechStarted,
    SpeechStopped,
    parse_server_message,
)

LONG = (
    "the quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly "
    "and a wizard's job is to vex chumps quickly in fog, pack my box with five dozen liquor jugs "
    "then sphinx of black quartz judge my vow"
)


def _final(segment: int, text: str, start: float, end: float) -> Final:
    return Final(segment=segment, text=text, start=start, end=end, steps=8, language="en", latency_ms=120.0)


FINALS = [
    _final(0, "hello world", 0.52, 1.98),
    _final(1, "", 2.5, 2.9),  # the VAD fired on a cough: no words, so no cue
    _final(2, LONG, 3.0, 17.25),
    _final(3, "and that is all", 3725.1, 3727.0),  # past one hour
]

_SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
_VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def _parse_cues(body: str, time_re: str) -> list[tuple[int, int, int, list[str]]]:
    """Parse SRT/VTT cue blocks strictly: number, timing line, 1+ text lines, blank line."""
    assert body.endswith("\n\n"), "every cue ends with a blank line"
    cue_re = re.compile(rf"(\d+)\n{time_re} --> {time_re}\n((?:[^\n]+\n)+)\n")
    cues, pos = [], 0
    while pos < len(body):
        m = cue_re.match(body, pos)
        assert m, f"malformed cue at {body[pos:pos + 80]!r}"
        g = m.groups()
        cues.append((int(g[0]), _ms(*g[1:5]), _ms(*g[5:9]), g[9].rstrip("\n").split("\n")))
        pos = m.end()
    return cues


def _check_cues_cover_finals(cues: list[tuple[int, int, int, list[str]]]) -> None:
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    for _, start, end, lines in cues:
        assert 1 <= len(lines) <= 2
        assert all(0 < len(line) <= 42 for line in lines)
        assert start <= end
    by_text = " ".join(" ".join(c[3]) for c in cues)
    assert by_text == " ".join(f.text for f in FINALS if f.text)
    # Group the cues back into finals by their words, then check the time spans.
    pos = 0
    for final in (f for f in FINALS if f.text):
        n_words, group = len(final.text.split()), []
        while n_words > 0:
            group.append(cues[pos])
            n_words -= len(" ".join(cues[pos][3]).split())
            pos += 1
        assert group[0][1] == round(final.start * 1000)
        assert group[-1][2] == round(final.end * 1000)
        for a, b in zip(group, group[1:]):
            assert a[2] == b[1], "cues of one final are back to back"


def test_srt_output_parses_back_when_given_finals() -> None:
    """SRT has numbered cues with HH:MM:SS,mmm times that match the finals exactly."""
    out = io.StringIO()
    sink = SrtSink(out)
    for f in FINALS:
        sink.handle(f)
    sink.close()
    cues = _parse_cues(out.getvalue(), _SRT_TIME)
    _check_cues_cover_finals(cues)
    assert cues[0][1:] == (520, 1980, ["hello world"])
    assert out.getvalue().splitlines()[-3] == "01:02:05,100 --> 01:02:07,000"


def test_vtt_output_parses_back_when_given_finals() -> None:
    """WebVTT starts with the header and uses HH:MM:SS.mmm cue times matching the finals."""
    out = io.StringIO()
    sink = VttSink(out)
    for f in FINALS:
        sink.handle(f)
    sink.close()
    text = out.getvalue()
    assert text.startswith("WEBVTT\n\n")
    cues = _parse_cues(text[len("WEBVTT\n\n"):], _VTT_TIME)
    _check_cues_cover_finals(cues)
    assert "01:02:05.100 --> 01:02:07.000" in text


def test_split_cues_divides_time_by_characters_when_final_is_long() -> None:
    """A long final becomes several <=2x42 cues whose durations follow their lengths."""
    final = _final(0, LONG, 10.0, 30.0)
    cues = split_cues(final)
    assert len(cues) >= 2
    total_chars = sum(len(line) for c in cues for line in c.lines)
    for c in cues:
        share = sum(len(line) for line in c.lines) / total_chars
        assert abs((c.end_ms - c.start_ms) - share * 20_000) <= 1
    assert (cues[0].start_ms, cues[-1].end_ms) == (10_000, 30_000)


def test_vtt_output_escapes_markup_when_text_has_angle_brackets() -> None:
    """Cue text cannot open tags or fake a timing arrow."""
    out = io.StringIO()
    VttSink(out).handle(_final(0, "a <b> & c --> d", 0.0, 1.0))
    assert "a &lt;b&gt; &amp; c --&gt; d" in out.getvalue()


def test_wrap_text_cuts_unspaced_text_when_wider_than_line() -> None:
    """Chinese has no spaces: it is cut at 42 columns, counting wide characters as two."""
    lines = wrap_text("你好世界" * 15)
    assert "".join(lines) == "你好世界" * 15
    assert all(len(line) <= 21 for line in lines)


def test_text_output_has_one_line_per_final_when_piped() -> None:
    """The text format prints each non-empty final on its own line and nothing else."""
    out = io.StringIO()
    sink = TextSink(out)
    for message in (SpeechStarted(0, 0.5), Partial(0, "hel", 0.5, 1.0, 2), *FINALS, Closed("eos", 4, 20.0)):
        sink.handle(message)
    assert out.getvalue() == f"hello world\n{LONG}\nand that is all\n"


def test_jsonl_output_round_trips_when_parsed_by_protocol() -> None:
    """Every event becomes one JSON line that parse_server_message turns back into it."""
    events = [
        Ready("s1", "tiny", 16000, "pcm_s16le", None, 4, 16),
        SpeechStarted(0, 0.5),
        Partial(0, "hello wor", 0.5, 1.5, 4),
        SpeechStopped(0, 1.98),
        *FINALS,
        Error("bad_audio", "odd number of bytes", False),
        Closed("eos", 4, 20.0),
    ]
    out = io.StringIO()
    sink = make_sink("jsonl", out, tty=False)
    for e in events:
        sink.handle(e)
    lines = out.getvalue().splitlines()
    assert [parse_server_message(line) for line in lines] == events


def test_live_output_has_no_control_characters_when_not_a_tty() -> None:
    """Without a terminal, live captions are plain '[mm:ss] text' lines, partials omitted."""
    out = io.StringIO()
    sink = LiveSink(out, tty=False)
    for message in (Partial(0, "hello", 0.5, 1.0, 2), FINALS[0], Partial(2, "the \x1b[31mquick", 3.0, 4.0, 2),
                    _final(2, "tab\there\nnewline \x1b[2J", 65.0, 66.0)):
        sink.handle(message)
    sink.close()
    text = out.getvalue()
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)
    assert text == "[00:00] hello world\n[01:05] tab here newline [2J\n"


def test_live_output_redraws_partial_in_place_when_a_tty() -> None:
    """On a terminal a partial is drawn dimmed after \\r + clear-line and replaced by the final."""
    out = io.StringIO()
    sink = LiveSink(out, tty=True, columns=lambda: 80)
    sink.handle(Partial(0, "hello", 0.5, 1.0, 2))
    sink.handle(Partial(0, "hello wor", 0.5, 1.5, 2))
    sink.handle(FINALS[0])
    assert out.getvalue() == (
        "\r\x1b[2K\x1b[2mhello\x1b[0m" "\r\x1b[2K\x1b[2mhello wor\x1b[0m" "\r\x1b[2K[00:00] hello world\n"
    )


def test_live_output_shows_partial_tail_when_wider_than_terminal() -> None:
    """A partial longer than the terminal shows its newest words so \\r can still redraw it."""
    out = io.StringIO()
    LiveSink(out, tty=True, dim=False, columns=lambda: 30).handle(Partial(0, LONG, 0.0, 9.0, 2))
    shown = out.getvalue().removeprefix("\r\x1b[2K")
    assert shown.startswith("\u2026") and LONG.endswith(shown[1:]) and len(shown) <= 29
