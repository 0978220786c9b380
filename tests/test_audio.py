"""Decoding, downmixing, resampling and windowing, on recordings generated here."""

import io
import struct

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from model.audio import (
    BLOCK_FRAMES,
    EDGE_PAD,
    WINDOW_HOP,
    AudioError,
    Recording,
    RecordingStream,
    WindowCutter,
    join_runs,
    parse_pcm16_wav,
    read_recording,
    split_windows,
    window_starts_s,
)
from model.contract import CLIP_SAMPLES, SAMPLE_RATE
from tests.helpers import tone, write_wav

SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]
RATES = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000]


def wav_bytes(samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def decode(data: bytes, **kwargs) -> Recording:
    return read_recording(io.BytesIO(data), **kwargs)


def dominant_frequency(mono: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(mono))


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_every_pcm_and_float_subtype_decodes_to_the_same_tone(subtype):
    original = tone(440, 0.5, 16_000, amplitude=0.5)
    audio = decode(wav_bytes(original, 16_000, subtype))
    assert audio.sample_rate == 16_000
    assert audio.channels == 1
    assert audio.mono.dtype == np.float32
    tolerance = 1 / 64 if subtype == "PCM_U8" else 1e-3
    np.testing.assert_allclose(audio.mono, original, atol=tolerance)


@pytest.mark.parametrize("rate", RATES)
def test_any_rate_is_resampled_to_16k_keeping_length_and_pitch(rate):
    audio = decode(wav_bytes(tone(1000, 1.5, rate), rate))
    mono = audio.mono
    assert abs(len(mono) - 1.5 * SAMPLE_RATE) <= 1
    assert abs(dominant_frequency(mono) - 1000) < 5
    assert np.sqrt(np.mean(mono[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_resampling_filters_out_frequencies_above_the_new_nyquist_instead_of_aliasing():
    # A 10 kHz tone at 48 kHz cannot exist at 16 kHz; naive decimation would fold it to 6 kHz.
    mono = decode(wav_bytes(tone(10_000, 1.0, 48_000), 48_000, "FLOAT")).mono
    interior = mono[1_000:-1_000]  # away from the filter's start-up and tail transients
    assert np.sqrt(np.mean(interior**2)) < 0.5 * 10 ** (-60 / 20)


@pytest.mark.parametrize("channels", [2, 3, 6, 8])
def test_multichannel_audio_is_downmixed_by_averaging(channels):
    left = tone(500, 1.0, 16_000, amplitude=0.4)
    samples = np.zeros((len(left), channels), np.float32)
    samples[:, 0] = left  # sound on one channel only, silence on the rest
    audio = decode(wav_bytes(samples, 16_000, "PCM_24"))
    assert audio.channels == channels
    np.testing.assert_allclose(audio.mono, left / channels, atol=1e-4)


@pytest.mark.parametrize(
    ("frames", "rate", "channels", "subtype"),
    [
        (8_000, 16_000, 1, "PCM_16"),  # one read, no resampling
        (BLOCK_FRAMES, 16_000, 1, "PCM_16"),  # exactly one block: an empty read ends it
        (BLOCK_FRAMES * 2 + 7, 44_100, 2, "PCM_24"),  # several blocks, streamed resampling
        (3_000, 8_000, 3, "FLOAT"),
    ],
)
def test_a_local_path_decodes_exactly_like_the_same_bytes_as_a_file(
    tmp_path, frames, rate, channels, subtype
):
    samples = np.random.default_rng(frames).uniform(-0.9, 0.9, (frames, channels))
    path = tmp_path / "clip.wav"
    soundfile.write(path, samples, rate, subtype=subtype)
    from_path = read_recording(str(path))
    from_file = decode(path.read_bytes())
    np.testing.assert_array_equal(from_path.mono, from_file.mono)
    assert from_path.duration_s == from_file.duration_s == frames / rate
    assert len(from_path.mono) == round(frames * SAMPLE_RATE / rate)


def with_chunk(data: bytes, chunk_id: bytes, body: bytes, before_data: bool) -> bytes:
    """The WAV bytes with one more chunk (padded to even size) before or after `data`."""
    chunk = struct.pack("<4sI", chunk_id, len(body)) + body + b"\0" * (len(body) % 2)
    at = data.index(b"data") if before_data else len(data)
    out = data[:at] + chunk + data[at:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


@pytest.mark.parametrize(
    ("frames", "rate", "channels", "extra_chunk"),
    [
        (16_000, 16_000, 1, None),
        (1, 16_000, 1, None),
        (12_345, 8_000, 2, (b"LIST", b"odd", True)),
        (4_410, 44_100, 6, (b"fact", b"\x04\0\0\0", True)),
        (BLOCK_FRAMES - 1, 48_000, 1, (b"junk", b"x" * 7, False)),
    ],
)
def test_plain_16_bit_wav_parses_to_exactly_what_libsndfile_decodes(
    frames, rate, channels, extra_chunk
):
    samples = np.random.default_rng(frames).integers(-32768, 32768, (frames, channels), np.int16)
    data = wav_bytes(samples, rate)
    if extra_chunk:
        data = with_chunk(data, *extra_chunk)
    parsed = parse_pcm16_wav(data)
    assert parsed is not None
    expected, expected_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(parsed[0], expected)
    assert parsed[1] == expected_rate


@pytest.mark.parametrize(
    "data",
    [
        wav_bytes(np.zeros(BLOCK_FRAMES, np.int16), 16_000),  # longer than one block
        wav_bytes(np.zeros(100, np.float32), 16_000, "PCM_24"),
        wav_bytes(np.zeros(100, np.float32), 16_000, "FLOAT"),
        wav_bytes(np.zeros(100, np.float32), 16_000)[:-1],  # data chunk cut short
        wav_bytes(np.zeros((100, 3), np.float32), 16_000)[:-2],  # partial frame
        wav_bytes(np.zeros(0, np.float32), 16_000),  # no frames
    ],
    ids=["long", "24-bit", "float", "truncated", "partial-frame", "empty"],
)
def test_anything_but_whole_short_16_bit_pcm_is_left_to_libsndfile(data):
    assert parse_pcm16_wav(data) is None


SHORT_WAV = wav_bytes(tone(440, 0.05, 16_000), 16_000)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(SHORT_WAV) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.integers(0, len(SHORT_WAV)),
)
def test_mutated_wav_bytes_parse_only_to_what_libsndfile_decodes(edits, cut):
    data = bytearray(SHORT_WAV)
    for offset, value in edits:
        data[offset] = value
    parsed = parse_pcm16_wav(bytes(data[:cut]))
    if parsed is None:
        return
    expected, rate = soundfile.read(io.BytesIO(bytes(data[:cut])), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(parsed[0], expected)
    assert parsed[1] == rate


def test_duration_and_format_facts_are_reported():
    audio = decode(wav_bytes(np.zeros((22_050 * 3, 2), np.float32), 22_050))
    assert audio.duration_s == pytest.approx(3.0)
    assert (audio.sample_rate, audio.channels) == (22_050, 2)


def test_float_samples_beyond_full_scale_are_clipped():
    audio = decode(wav_bytes(np.full(100, 4.0, np.float32), 16_000, "FLOAT"))
    assert audio.mono.max() == 1.0


def wav_header_claiming(frames: int, bytes_per_sample: int = 2) -> bytes:
    """A mono 16 kHz PCM WAV header whose data chunk claims `frames` frames."""
    data_size = frames * bytes_per_sample
    byte_rate = 16_000 * bytes_per_sample
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_size, 2**32 - 1))
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, 1, 16_000, byte_rate, bytes_per_sample, 8 * bytes_per_sample
        )
        + b"data"
        + struct.pack("<I", data_size)
    )


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty_file"),
        (b"this is a text file, not audio\n" * 10, "unreadable_audio"),
        (wav_bytes(tone(440, 1, 16_000), 16_000)[:20], "unreadable_audio"),
        (wav_header_claiming(0), "no_samples"),
        (
            wav_bytes(np.array([0.1, np.nan, 0.2], np.float32), 16_000, "FLOAT"),
            "non_finite_samples",
        ),
        (
            wav_bytes(np.array([0.1, np.inf, 0.2], np.float32), 16_000, "FLOAT"),
            "non_finite_samples",
        ),
        (wav_bytes(np.array([0.1, -np.inf], np.float64), 16_000, "DOUBLE"), "non_finite_samples"),
    ],
    ids=["empty", "text", "truncated-header", "zero-samples", "nan", "inf", "double-inf"],
)
def test_bad_input_raises_a_clear_audio_error(data, kind):
    with pytest.raises(AudioError) as raised:
        decode(data)
    assert raised.value.kind == kind
    assert str(raised.value).startswith(f"{kind}: ")


def test_a_header_claiming_two_billion_frames_decodes_only_the_frames_present():
    audio = decode(wav_header_claiming(2**31, bytes_per_sample=1) + b"\x80" * 1_000)
    assert len(audio.mono) == 1_000
    assert audio.duration_s == pytest.approx(1_000 / 16_000)


def test_a_recording_over_the_duration_cap_is_refused():
    data = wav_bytes(np.zeros(16_000 * 3, np.float32), 16_000)
    assert decode(data, max_duration_s=3).duration_s == 3
    with pytest.raises(AudioError, match="too_long"):
        decode(data, max_duration_s=2.5)


def test_a_data_chunk_shorter_than_its_header_says_decodes_what_is_there():
    data = wav_header_claiming(48_000) + np.full(8_000, 1_000, "<i2").tobytes()
    audio = decode(data)
    assert len(audio.mono) == 8_000
    assert audio.mono.max() == pytest.approx(1_000 / 32_768)


def test_short_audio_becomes_one_window_padded_evenly():
    windows = split_windows(np.ones(8_000, np.float32))
    assert windows.shape == (1, CLIP_SAMPLES)
    assert windows[0, :4_000].sum() == 0 and windows[0, -4_000:].sum() == 0
    assert windows[0, 4_000:12_000].min() == 1


def test_exactly_one_second_is_one_window_unchanged():
    mono = np.random.default_rng(0).uniform(-1, 1, CLIP_SAMPLES).astype(np.float32)
    np.testing.assert_array_equal(split_windows(mono), mono[np.newaxis])


def assert_windows_start_where_said(windows: np.ndarray, starts, mono: np.ndarray) -> None:
    """Each window of a long recording is the audio from its start sample on, read with
    EDGE_PAD zeros on both sides (a start before the recording's is negative)."""
    silence = np.zeros(EDGE_PAD, np.float32)
    padded = np.concatenate([silence, mono, silence])
    for window, start in zip(windows, starts, strict=True):
        np.testing.assert_array_equal(
            window, padded[start + EDGE_PAD : start + EDGE_PAD + CLIP_SAMPLES]
        )


@pytest.mark.parametrize("length", [CLIP_SAMPLES + 1, 24_000, 40_000, 60 * SAMPLE_RATE])
def test_long_audio_slides_half_second_windows_over_it_with_half_a_window_of_silence_around(
    length,
):
    mono = np.arange(1, length + 1, dtype=np.float32)  # no sample is 0, as the silence is
    windows = split_windows(mono)
    assert windows.shape[1] == CLIP_SAMPLES
    assert np.all(windows[0, :EDGE_PAD] == 0) and windows[0, EDGE_PAD] == 1
    assert np.all(windows[-1, -EDGE_PAD:] == 0) and windows[-1, -EDGE_PAD - 1] == length
    firsts = [int(np.flatnonzero(window)[0]) for window in windows]  # first recording sample
    starts = [int(window[i]) - 1 - i for window, i in zip(windows, firsts, strict=True)]
    assert np.all(np.diff(starts)[:-1] == WINDOW_HOP)
    assert 0 < np.diff(starts)[-1] <= WINDOW_HOP
    assert_windows_start_where_said(windows, starts, mono)


def test_a_minute_costs_about_120_windows():
    assert len(split_windows(np.zeros(60 * SAMPLE_RATE, np.float32))) == 121


def test_a_word_at_the_very_start_or_end_of_a_recording_lies_mid_window():
    """A 0.3 s word at each end of a 3 s recording: some window holds it whole with at least
    0.2 s on both sides, as training places words (without the silence around, it would lie at
    a window's edge)."""
    mono = np.zeros(3 * SAMPLE_RATE, np.float32)
    word = 3 * SAMPLE_RATE // 10
    mono[:word], mono[-word:] = 1, 2
    margin = SAMPLE_RATE // 5
    for value in (1, 2):
        held = [np.flatnonzero(w == value) for w in split_windows(mono)]
        assert any(
            len(at) == word and at[0] >= margin and at[-1] < CLIP_SAMPLES - margin for at in held
        ), value


# Blocks of one sample only up to 1.5 s (each sample is a call): a short recording, the first
# full window and the windows after it hold every case a single sample meets.
BLOCK_CASES = [
    (length, block)
    for length in (100, CLIP_SAMPLES, CLIP_SAMPLES + 1, 24_000, 123_457)
    for block in (1, 7_999, 8_000, 65_536)
    if block > 1 or length <= 24_000
]


@pytest.mark.parametrize(("length", "block"), BLOCK_CASES)
def test_windows_cut_block_by_block_equal_those_of_the_whole(length, block):
    mono = np.arange(1, length + 1, dtype=np.float32)
    cutter = WindowCutter()
    pieces = [cutter.add(mono[start : start + block]) for start in range(0, length, block)]
    pieces.extend(cutter.finish())
    windows = np.concatenate([run.windows() for run, _ in pieces])
    starts = np.concatenate([starts for _, starts in pieces])
    np.testing.assert_array_equal(windows, split_windows(mono))
    if length > CLIP_SAMPLES:
        assert_windows_start_where_said(windows, starts, mono)
    grid = [run for run, _ in pieces[:-1] if run.count]
    if grid:  # the blocks' runs join into one run of the windows every WINDOW_HOP
        np.testing.assert_array_equal(join_runs(grid).windows(), windows[: len(windows) - 1])


def test_a_stream_decodes_a_long_file_in_blocks_to_the_same_samples(tmp_path):
    samples = tone(440, 10, 44_100)
    path = write_wav(tmp_path / "long.wav", np.stack([samples, samples / 2], axis=1), 44_100)
    with RecordingStream(str(path)) as stream:
        blocks = list(stream.blocks())
    assert len(blocks) > 1 and stream.duration_s == pytest.approx(10)
    np.testing.assert_array_equal(np.concatenate(blocks), read_recording(str(path)).mono)


@pytest.mark.parametrize("samples", [16_001, 48_000, 50_123])
def test_window_starts_are_those_the_pipeline_cuts(samples):
    cutter = WindowCutter()
    pieces = [cutter.add(np.zeros(samples, np.float32)), *cutter.finish()]
    starts = np.concatenate([starts for _, starts in pieces]) / 16_000
    assert window_starts_s(len(starts), samples / 16_000) == pytest.approx(starts)
