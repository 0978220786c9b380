"""Nothing is lost, whatever is in the folder: a corpus of awkward files, and fuzzed WAV bytes."""

import io
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.audio import AudioError, read_recording
from model.training.data import read_audio, read_manifest
from pipeline.cli import main
from pipeline.loading import WindowReader
from tests.helpers import tone, write_wav

LOSSLESS = {"PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
LOSSY_WAV_SUBTYPES = ["PCM_U8", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM", "GSM610", "G721_32"]


def riff(fmt: bytes, data: bytes, riff_size: int | None = None, data_size: int | None = None):
    """A hand-built WAV, with chunk sizes that may lie."""
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data) if data_size is None else data_size) + data
    size = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", size) + body


PCM16_MONO_16K = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)


class Corpus:
    """A folder of awkward files, each with what it must give: a label kind (None: any label)
    or an error."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.expect: dict[str, str | None] = {}

    def add(
        self, name: str, expected: str | None, samples=None, rate=16_000, subtype="PCM_16", **kw
    ):
        """A file written by soundfile (or, without samples, one made by the caller)."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if samples is not None:
            soundfile.write(path, samples, rate, subtype=subtype, **kw)
        self.expect[str(path)] = expected

    def add_bytes(self, name: str, expected: str | None, data: bytes) -> None:
        (self.folder / name).write_bytes(data)
        self.expect[str(self.folder / name)] = expected


def add_encodings(corpus: Corpus, yes: np.ndarray) -> None:
    """A `yes` in every WAV subtype, container, rate and channel count, and odd content."""
    add = corpus.add
    for subtype in sorted(LOSSLESS) + LOSSY_WAV_SUBTYPES:
        add(f"subtype_{subtype}.wav", "same" if subtype in LOSSLESS else None, yes, subtype=subtype)
    add("wavex_container.wav", "same", yes, format="WAVEX")
    add("rf64_container.wav", "same", yes, format="RF64")
    add("w64_container.wav", "same", yes, format="W64")
    add("flac_named_wav.wav", "same", yes, format="FLAC")
    for rate in (8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000):
        add(f"rate_{rate}.wav", None, soxr.resample(yes, 16_000, rate), rate=rate)
    for channels in (2, 3, 4, 6, 8):
        add(f"channels_{channels}.wav", "same", np.tile(yes[:, None], (1, channels)))
    add("one_sample.wav", None, np.array([0.1], np.float32))
    add("ten_minutes.wav", None, np.tile(tone(300, 1, 16_000, 0.05), 600))
    add("digital_silence.wav", "silence", np.zeros(16_000, np.float32))
    add("dc_offset.wav", None, np.full(16_000, 0.5, np.float32))
    add("clipped_yes.wav", None, np.clip(yes * 20, -1, 1))
    add("nan.wav", "non_finite_samples", np.array([0.0, np.nan] * 800, np.float32), subtype="FLOAT")
    add("inf.wav", "non_finite_samples", np.array([0.0, -np.inf] * 800), subtype="DOUBLE")
    add("ünïcødé ñame 日本語.wav", "same", yes)
    add("sub dir/with spaces.WAV", "same", yes)


def add_broken_files(corpus: Corpus, yes: np.ndarray) -> None:
    """Hand-built headers that lie, files that are not audio, and paths that are not files."""
    folder = corpus.folder
    pcm = (yes * 32_767).astype("<i2").tobytes()
    corpus.add_bytes("truncated_data.wav", None, riff(PCM16_MONO_16K, pcm)[: 44 + len(pcm) // 2])
    corpus.add_bytes(
        "wrong_chunk_sizes.wav",
        None,
        riff(PCM16_MONO_16K, pcm, riff_size=12, data_size=len(pcm) * 3),
    )
    eight_bit = struct.pack("<HHIIHH", 1, 1, 16_000, 16_000, 1, 8)
    corpus.add_bytes(
        "claims_2_31_frames.wav", None, riff(eight_bit, b"\x80" * 4_000, 2**32 - 1, 2**31)
    )
    corpus.add_bytes("zero_bytes.wav", "empty_file", b"")
    corpus.add_bytes("random_bytes.wav", "unreadable_audio", np.random.default_rng(0).bytes(5_000))
    corpus.add_bytes("header_only.wav", "no_samples", riff(PCM16_MONO_16K, b""))
    (folder / "directory.wav").mkdir()
    corpus.add("directory.wav", "not_a_file")
    os.symlink(folder / "does_not_exist.wav", folder / "broken_symlink.wav")
    corpus.add("broken_symlink.wav", "unreadable_file")
    os.mkfifo(folder / "named_pipe.wav")  # opening it would block forever
    corpus.add("named_pipe.wav", "not_a_file")
    corpus.add("no permission.wav", None, yes)
    os.chmod(folder / "no permission.wav", 0)  # unreadable, unless the tests run as root
    readable = os.access(folder / "no permission.wav", os.R_OK)
    corpus.add("no permission.wav", "same" if readable else "unreadable_file")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir) -> tuple[Path, dict[str, str | None]]:
    """Awkward files, each with what it must give: a label kind (None: any label) or an error."""
    yes_row = next(r for r in read_manifest(data_dir) if r.split == "test" and r.word == "yes")
    yes = read_audio(data_dir / yes_row.path)
    files = Corpus(tmp_path_factory.mktemp("awkward"))
    add_encodings(files, yes)
    add_broken_files(files, yes)
    return files.folder, files.expect


def test_the_corpus_is_broad(corpus):
    assert len(corpus[1]) >= 25


@pytest.fixture(scope="module")
def corpus_rows(corpus, tmp_path_factory) -> dict[str, dict]:
    folder, _ = corpus
    output = tmp_path_factory.mktemp("awkward_out") / "labels"
    assert main(["--input", str(folder), "--output", str(output), "--max_duration_s", "900"]) == 0
    return {row["path"]: row for row in pq.read_table(output).to_pylist()}


def test_every_awkward_file_gives_exactly_one_row(corpus, corpus_rows):
    assert sorted(corpus_rows) == sorted(corpus[1])


def test_each_row_is_the_expected_label_or_a_clear_error(corpus, corpus_rows):
    reference = corpus_rows[str(corpus[0] / "subtype_PCM_16.wav")]
    assert reference["error"] is None
    for path, expected in corpus[1].items():
        row = corpus_rows[path]
        if expected is None or expected in ("same", "silence"):
            assert row["error"] is None, (path, row["error"])
            assert row["label"] in {"yes", "no", "unknown", "silence"}
            if expected == "same":
                assert row["label"] == reference["label"], path
                assert row["score_yes"] == pytest.approx(reference["score_yes"], abs=0.02), path
            if expected == "silence":
                assert row["label"] == "silence", path
        else:
            assert row["label"] is None, path
            assert row["error"].startswith(expected + ": "), (path, row["error"])


def test_long_and_odd_files_report_their_true_format(corpus, corpus_rows):
    folder = corpus[0]
    ten_minutes = corpus_rows[str(folder / "ten_minutes.wav")]
    assert ten_minutes["duration_s"] == pytest.approx(600)
    assert corpus_rows[str(folder / "rate_192000.wav")]["sample_rate"] == 192_000
    assert corpus_rows[str(folder / "channels_8.wav")]["channels"] == 8
    assert corpus_rows[str(folder / "one_sample.wav")]["duration_s"] == pytest.approx(1 / 16_000)


def test_a_recording_over_the_cap_is_an_error_row_that_names_the_cap(corpus):
    reader = WindowReader(str(corpus[0] / "ten_minutes.wav"), max_duration_s=60)
    assert list(reader.runs()) == []
    assert reader.info.error.startswith("too_long: ")
    assert "--max_duration_s" in reader.info.error


VALID_WAV = io.BytesIO()
soundfile.write(VALID_WAV, tone(440, 0.25, 8_000), 8_000, subtype="PCM_16", format="WAV")


@settings(
    max_examples=1_000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID_WAV.getvalue()) - 1), st.integers(0, 255)),
        max_size=12,
    ),
    cut=st.integers(0, len(VALID_WAV.getvalue())),
)
def test_mutated_wav_bytes_decode_or_fail_cleanly(edits, cut):
    data = bytearray(VALID_WAV.getvalue())
    for offset, value in edits:
        data[offset] = value
    try:
        recording = read_recording(io.BytesIO(bytes(data[:cut])), max_duration_s=60)
    except AudioError:
        return
    assert recording.mono.dtype == np.float32
    assert np.isfinite(recording.mono).all()


def test_a_folder_of_mutated_files_gives_one_row_each(tmp_path):
    rng = np.random.default_rng(7)
    valid = VALID_WAV.getvalue()
    for index in range(200):
        data = bytearray(valid[: rng.integers(0, len(valid) + 1)])
        for offset in rng.integers(0, max(len(data), 1), rng.integers(0, 8)):
            if data:
                data[offset] = rng.integers(0, 256)
        (tmp_path / "in" / f"mutant_{index:03d}.wav").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"mutant_{index:03d}.wav").write_bytes(bytes(data))
    write_wav(tmp_path / "in" / "intact.wav", tone(440, 1, 8_000), 8_000)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(Path(row["path"]).name for row in rows) == sorted(
        path.name for path in (tmp_path / "in").iterdir()
    )
    assert all((row["label"] is None) != (row["error"] is None) for row in rows)
