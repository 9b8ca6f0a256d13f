"""Tests for server.core.audio: PCM decoding, streaming resampling and quiet-point splitting."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import SAMPLE_RATE, speech_with_pauses

from server.core.audio import (
    BadAudio,
    PcmDecoder,
    StreamResampler,
    find_split_point,
    resample,
    split_long_audio,
)
from server.wire.v1 import Encoding


def _random_cuts(n: int, rng: np.random.Generator, max_piece: int) -> list[int]:
    cuts, pos = [], 0
    while pos < n:
        pos = min(n, pos + int(rng.integers(1, max_piece)))
        cuts.append(pos)
    return cuts


def _feed_in_pieces(decoder: PcmDecoder, data: bytes, rng: np.random.Generator) -> np.ndarray:
    out, prev = [], 0
    for cut in _random_cuts(len(data), rng, 13):
        out.append(decoder.feed(data[prev:cut]))
        prev = cut
    return np.concatenate(out)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_pcm_decoder_matches_unsplit_when_samples_split_across_frames(encoding: Encoding) -> None:
    """Frames cut at odd byte offsets decode to exactly the samples of the whole buffer."""
    rng = np.random.default_rng(0)
    if encoding is Encoding.PCM_S16LE:
        data = rng.integers(-32768, 32768, 1000).astype("<i2").tobytes()
    else:
        data = rng.uniform(-1, 1, 1000).astype("<f4").tobytes()
    whole = PcmDecoder(encoding).feed(data)
    split_decoder = PcmDecoder(encoding)
    pieces = _feed_in_pieces(split_decoder, data, rng)
    assert len(whole) == 1000
    assert pieces.dtype == np.float32
    np.testing.assert_array_equal(pieces, whole)
    assert split_decoder.pending_bytes == 0


def test_pcm_decoder_keeps_partial_sample_when_frame_ends_mid_sample() -> None:
    """Three bytes of s16 give one sample now and one leftover byte for the next frame."""
    decoder = PcmDecoder(Encoding.PCM_S16LE)
    data = np.array([1000, -2000], dtype="<i2").tobytes()
    first = decoder.feed(data[:3])
    assert decoder.pending_bytes == 1
    second = decoder.feed(data[3:])
    assert decoder.pending_bytes == 0
    np.testing.assert_array_equal(np.concatenate([first, second]), np.array([1000, -2000]) / 32768)


def test_pcm_decoder_scales_s16_to_unit_range_when_decoding_extremes() -> None:
    """s16 full scale maps to [-1, 1) by dividing by 32768."""
    data = np.array([-32768, 0, 16384, 32767], dtype="<i2").tobytes()
    out = PcmDecoder(Encoding.PCM_S16LE).feed(data)
    np.testing.assert_array_equal(out, np.array([-1.0, 0.0, 0.5, 32767 / 32768], dtype=np.float32))


def test_pcm_decoder_clips_f32_when_samples_exceed_unit_range() -> None:
    """Finite float samples outside [-1, 1] are clipped, not rejected."""
    data = np.array([1.5, -3.0, 0.25], dtype="<f4").tobytes()
    out = PcmDecoder(Encoding.PCM_F32LE).feed(data)
    np.testing.assert_array_equal(out, np.array([1.0, -1.0, 0.25], dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pcm_decoder_raises_bad_audio_when_f32_frame_has_non_finite(bad: float) -> None:
    """A NaN/inf frame raises BadAudio and drops its samples; later frames stay aligned."""
    good1 = np.array([0.1, 0.2, 0.3], dtype="<f4").tobytes()
    bad_frame = np.array([0.4, bad], dtype="<f4").tobytes()
    good2 = np.array([-0.5, 0.6, -0.7], dtype="<f4").tobytes()
    stream = good1 + bad_frame + good2
    decoder = PcmDecoder(Encoding.PCM_F32LE)
    np.testing.assert_array_equal(decoder.feed(stream[:10]), np.array([0.1, 0.2], dtype=np.float32))
    # This frame completes 0.3, carries the bad samples and ends 2 bytes into good2.
    with pytest.raises(BadAudio, match="non-finite"):
        decoder.feed(stream[10:22])
    assert decoder.pending_bytes == 2
    out = decoder.feed(stream[22:])
    np.testing.assert_array_equal(out, np.array([-0.5, 0.6, -0.7], dtype=np.float32))


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _stream(resampler: StreamResampler, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, prev = [], 0
    for cut in _random_cuts(len(x), rng, 5000):
        out.append(resampler.process(x[prev:cut]))
        prev = cut
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_stream_resampler_preserves_tone_when_streamed_in_random_chunks(rate: int) -> None:
    """A 1 kHz tone comes out at 16 kHz with the right length and the same frequency."""
    seconds = 2.0
    out = _stream(StreamResampler(rate), _tone(1000.0, rate, seconds), seed=rate)
    assert out.dtype == np.float32
    assert abs(len(out) - seconds * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(out)
    assert abs(peak_hz - 1000.0) < 2.0
    # Away from the edges (filter start-up), the amplitude is preserved.
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_stream_resampler_removes_tone_when_above_output_nyquist() -> None:
    """A 12 kHz tone at 48 kHz would alias to 4 kHz; the filter must remove it (< -60 dB)."""
    out = _stream(StreamResampler(48000), _tone(12000.0, 48000, 1.0), seed=1)
    assert abs(len(out) - SAMPLE_RATE) <= 2
    # The abrupt tone start/stop has broadband energy; judge the steady part.
    middle = out[len(out) // 8 : -len(out) // 8]
    power_in = 0.5**2 / 2
    assert np.mean(middle**2) < power_in * 1e-6


def test_stream_resampler_passes_through_when_rate_is_16k() -> None:
    """At 16 kHz input the samples come back unchanged and flush adds nothing."""
    x = _tone(440.0, SAMPLE_RATE, 0.1)
    resampler = StreamResampler(SAMPLE_RATE)
    np.testing.assert_array_equal(resampler.process(x), x)
    assert len(resampler.flush()) == 0


def test_stream_resampler_raises_when_rate_is_not_positive() -> None:
    """A zero or negative rate is refused (the wire protocols check their own 8..48 kHz range)."""
    with pytest.raises(ValueError, match="in_rate 0"):
        StreamResampler(0)


def test_whole_file_resample_equals_the_stream_in_any_chunking() -> None:
    """resample() (files) and StreamResampler (sessions, the client) are one filter: same samples."""
    tone = _tone(440.0, 44100, 1.3)
    stream = StreamResampler(44100)
    chunked = np.concatenate([stream.process(tone[i : i + 1234]) for i in range(0, len(tone), 1234)] + [stream.flush()])
    whole = resample(tone, 44100)
    assert len(whole) == len(chunked) and abs(len(whole) - round(1.3 * SAMPLE_RATE)) <= 2
    np.testing.assert_allclose(whole, chunked, atol=1e-6)


def test_find_split_point_returns_middle_of_gap_when_gap_is_silent() -> None:
    """Between two tones, the cut lands at the centre of the silent gap."""
    sr = SAMPLE_RATE
    x = np.concatenate([_tone(300, sr, 1.0), np.zeros(int(0.4 * sr), np.float32), _tone(300, sr, 1.0)])
    cut = find_split_point(x, sr, int(0.5 * sr), int(2.0 * sr))
    assert abs(cut - int(1.2 * sr)) <= int(0.03 * sr)


def test_split_long_audio_cuts_in_pauses_when_sentences_separated() -> None:
    """Each cut of a long espeak recording falls inside a pause between sentences."""
    parts: list[str | float] = [
        0.3,
        "The weather was cold and grey all morning.",
        0.7,
        "We walked to the station and waited for the train.",
        0.7,
        "It arrived twenty minutes late.",
        0.7,
        "Nobody on the platform seemed surprised.",
        0.3,
    ]
    audio, truth = speech_with_pauses(parts)
    max_s = 5.0
    chunks = split_long_audio(audio, SAMPLE_RATE, max_seconds=max_s, search_seconds=3.0)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])), "chunks must be contiguous"
    assert all(0 < end - start <= max_s * SAMPLE_RATE for start, end in chunks)
    pauses = [(truth[i][1], truth[i + 1][0]) for i in range(len(truth) - 1)]
    cuts = [end / SAMPLE_RATE for _, end in chunks[:-1]]
    assert len(cuts) >= 2
    for cut in cuts:
        assert any(lo <= cut <= hi for lo, hi in pauses), f"cut at {cut:.2f}s is not in a pause {pauses}"


def test_split_long_audio_returns_one_chunk_when_audio_fits() -> None:
    """Audio no longer than max_seconds is one chunk; empty audio gives no chunks."""
    assert split_long_audio(np.zeros(16000, np.float32), SAMPLE_RATE, 1.0) == [(0, 16000)]
    assert split_long_audio(np.zeros(0, np.float32), SAMPLE_RATE, 1.0) == []
