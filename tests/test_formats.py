"""Recordings as users keep them: FLAC, OGG (Vorbis, Opus) and MP3 beside WAV, selected by
--extensions; folders reached through symbolic links; and options no one knows, refused."""

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from model.contract import LABELS
from pipeline.cli import EXIT_BAD_INPUT, main
from pipeline.sources import list_input, parse_extensions
from tests.helpers import first_test_clip, read_output

# extension -> (soundfile format, subtype); the same recordings are written in each.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
LOSSY_SCORE_TOLERANCE = 0.05  # what Vorbis, Opus and MP3 at their default quality move a score
# Each recording's label; yes_late is a 3 s file with the keyword 1.5 s in.
EXPECTED = {"yes": "yes", "no": "no", "go": "unknown", "yes_late": "yes"}


def write_audio(path: Path, samples: np.ndarray, extension: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio_format, subtype = FORMATS[extension]
    soundfile.write(path, samples, 16_000, format=audio_format, subtype=subtype)
    return path


def recordings_of(data_dir: Path) -> dict[str, np.ndarray]:
    clips = {word: first_test_clip(data_dir, word) for word in ("yes", "no", "go")}
    silence = np.zeros(24_000, np.float32)
    clips["yes_late"] = np.concatenate([silence, clips["yes"], silence[:8_000]])
    return clips


@pytest.fixture(scope="module")
def every_format(tmp_path_factory, data_dir) -> Path:
    """The same recordings in each format, a corrupt FLAC and a truncated MP3."""
    folder = tmp_path_factory.mktemp("formats")
    for word, samples in recordings_of(data_dir).items():
        for extension in FORMATS:
            write_audio(folder / extension / f"{word}.{extension}", samples, extension)
    flac = bytearray((folder / "flac" / "yes.flac").read_bytes())
    flac[200:400] = bytes(200)  # frames overwritten: the decoder loses sync
    (folder / "broken" / "corrupt.flac").parent.mkdir()
    (folder / "broken" / "corrupt.flac").write_bytes(bytes(flac))
    mp3 = (folder / "mp3" / "yes_late.mp3").read_bytes()
    (folder / "broken" / "truncated.mp3").write_bytes(mp3[: len(mp3) // 2])  # a stopped copy
    return folder


@pytest.fixture(scope="module")
def labelled(every_format, tmp_path_factory) -> dict[str, dict]:
    """Every file of `every_format` labelled in one run, each row by its path."""
    output = tmp_path_factory.mktemp("formats_out") / "labels"
    extensions = "wav,FLAC,.ogg,opus,Mp3"
    argv = ["--input", str(every_format), "--output", str(output), "--extensions", extensions]
    assert main(argv) == 0
    return {row["path"]: row for row in read_output(output)}


def test_each_format_is_labelled_as_its_wav(every_format, labelled):
    assert len(labelled) == len(EXPECTED) * len(FORMATS) + 2
    for word, label in EXPECTED.items():
        reference = labelled[str(every_format / "wav" / f"{word}.wav")]
        assert (reference["label"], reference["error"]) == (label, None)
        for extension in FORMATS:
            row = labelled[str(every_format / extension / f"{word}.{extension}")]
            assert row["error"] is None, row
            assert row["label"] == reference["label"], (extension, word)
            assert row["sample_rate"] == reference["sample_rate"] == 16_000
            assert row["duration_s"] == pytest.approx(reference["duration_s"], abs=1e-3)
            tolerance = 0.0 if extension == "flac" else LOSSY_SCORE_TOLERANCE  # lossless
            for label in LABELS:
                name = f"score_{label}"
                assert row[name] == pytest.approx(reference[name], abs=tolerance), (extension, word)


def test_a_corrupt_flac_and_a_truncated_mp3_are_error_rows(every_format, labelled):
    corrupt = labelled[str(every_format / "broken" / "corrupt.flac")]
    truncated = labelled[str(every_format / "broken" / "truncated.mp3")]
    assert corrupt["label"] is None and corrupt["error"].startswith("unreadable_audio: ")
    assert truncated["label"] is None and truncated["error"].startswith(
        "unreadable_audio: a truncated MP3"
    )


def test_events_of_a_long_recording_are_the_same_in_every_format(data_dir, tmp_path):
    """A 75 s recording (several decoded blocks) with keywords at known times."""
    clips = recordings_of(data_dir)
    gap = np.zeros(16_000 * 6, np.float32)
    parts = [gap, clips["yes"], gap, clips["go"], gap, clips["no"]] * 2 + [gap, gap, gap]
    recording = np.concatenate(parts)
    for extension in FORMATS:
        write_audio(tmp_path / "in" / f"call.{extension}", recording, extension)
    output, events = tmp_path / "out", tmp_path / "events"
    argv = ["--input", str(tmp_path / "in"), "--output", str(output), "--events", str(events)]
    assert main([*argv, "--extensions", ",".join(FORMATS)]) == 0
    found = {
        path.rsplit(".", 1)[1]: [(row["label"], row["start_s"]) for row in rows]
        for path, rows in group_by_path(pq.read_table(events).to_pylist()).items()
    }
    reference = found["wav"]
    assert [label for label, _ in reference] == ["yes", "no", "yes", "no"]
    for extension in FORMATS:
        assert [label for label, _ in found[extension]] == [label for label, _ in reference]
        for (_, start), (_, expected) in zip(found[extension], reference, strict=True):
            assert start == pytest.approx(expected, abs=0.5), extension


def group_by_path(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda row: (row["path"], row["start_s"])):
        grouped.setdefault(row["path"], []).append(row)
    return grouped


def test_a_folder_of_other_audio_names_the_flag_to_use(every_format, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["--input", str(every_format / "flac"), "--output", str(output)]) == EXIT_BAD_INPUT
    message = capsys.readouterr().err
    assert f"no .wav files under {every_format / 'flac'}; found 4 .flac: add --extensions flac" in (
        message
    )
    assert not output.exists()
    assert main(["--input", str(tmp_path / "empty"), "--output", str(output)]) == EXIT_BAD_INPUT


def test_extensions_are_a_comma_separated_list_in_any_case():
    assert parse_extensions("wav, FLAC,.mp3,wav") == ("wav", "flac", "mp3")
    with pytest.raises(ValueError, match="names no extension"):
        parse_extensions(" , ")


def test_links_to_folders_are_followed_and_each_real_folder_listed_once(tmp_path, caplog):
    real, other = tmp_path / "disk1" / "calls", tmp_path / "disk2" / "more"
    for folder, names in ((real, ("a.wav", "b.WAV")), (other, ("c.wav",))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")
    data = tmp_path / "data"
    data.mkdir()
    (data / "calls").symlink_to(real)
    (data / "calls_again").symlink_to(real)  # two links to one folder
    (data / "more").symlink_to(other)
    (other / "loop").symlink_to(data)  # a loop back to the top
    (data / "gone").symlink_to(tmp_path / "unplugged_disk")  # a broken link
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        listed = list(list_input(str(data)))
    assert listed == [
        str(data / "calls" / "a.wav"),
        str(data / "calls" / "b.WAV"),
        str(data / "more" / "c.wav"),
    ]
    assert "skipped 1 broken symbolic link under" in caplog.text


def test_a_mistyped_option_stops_the_run_before_it_starts(every_format, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["--input", str(every_format / "wav"), "--output", str(output)]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--batchsize", "64"])
    assert stopped.value.code == EXIT_BAD_INPUT
    assert "unknown option --batchsize; did you mean --batch_size?" in capsys.readouterr().err
    assert not output.exists()
    # Beam's own options still pass through.
    assert main([*argv, "--direct_num_workers", "1", "--runner=DirectRunner"]) == 0
    assert len(os.listdir(output)) > 1
