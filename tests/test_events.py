"""Long recordings through the CLI: every yes and no with its time (`--events`), the per-file
occurrence columns, streaming decode, and the events committed together with the labels."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soxr

from model.audio import read_recording, split_windows
from model.contract import LABELS
from model.evaluation.eval_sets import long_recording, match_events, split_clips
from model.training.data import load_noise
from pipeline import output
from pipeline.cli import main
from pipeline.loading import WindowReader
from tests.helpers import write_wav

DURATION_S = 50.0
RATE = 44_100


@pytest.fixture(scope="module")
def long_call(tmp_path_factory, data_dir, keyword_model) -> tuple[Path, tuple]:
    """A 50 s 44.1 kHz stereo recording (far longer than a decode block): test-split words at
    known times over a noise floor. The words are ones the shipped model labels right, the
    keywords even with other words 0.3 s before and after them (the closest that
    long_recording places words, where the context rule lowers a keyword most), so what is
    tested here is where the events are, not the model's recall."""
    decision = keyword_model.decision
    clips = split_clips(data_dir, "test")
    gap = np.zeros(int(0.3 * 16_000), np.float32)

    def heard_as(label: str, clip: np.ndarray, before: np.ndarray, after: np.ndarray) -> bool:
        audio = np.concatenate([before, gap, clip, gap, after]) if len(before) else clip
        probabilities = keyword_model.predict(split_windows(audio))
        return LABELS[decision.label_recording(probabilities)[0]] == label

    none = np.zeros(0, np.float32)
    unknown = [clip for clip in clips["unknown"][:80] if heard_as("unknown", clip, none, none)][:8]
    chosen = {
        label: [clip for clip in clips[label][:80] if heard_as(label, clip, *unknown[:2])][:8]
        for label in ("yes", "no")
    }
    chosen["unknown"] = unknown
    rng = np.random.default_rng(5)
    audio, keywords = long_recording(
        chosen, load_noise(data_dir, "test"), rng, DURATION_S, keyword_share=0.4
    )
    stereo = np.repeat(soxr.resample(audio, 16_000, RATE)[:, np.newaxis], 2, axis=1)
    folder = tmp_path_factory.mktemp("long")
    write_wav(folder / "call.wav", stereo, RATE, "PCM_24")
    return folder, keywords


@pytest.fixture(scope="module")
def labelled(long_call, tmp_path_factory) -> tuple[Path, Path]:
    folder, _ = long_call
    out = tmp_path_factory.mktemp("labelled")
    argv = ["--input", str(folder), "--output", str(out / "labels"), "--events"]
    assert main([*argv, str(out / "events")]) == 0
    return out / "labels", out / "events"


def read_events(events_dir: Path) -> list[dict]:
    return sorted(pq.read_table(events_dir).to_pylist(), key=lambda e: (e["path"], e["start_s"]))


def test_every_keyword_is_an_event_at_its_time(long_call, labelled):
    _, keywords = long_call
    events = read_events(labelled[1])
    assert len(keywords) >= 5
    errors, false_alarms, missed = match_events(
        [(e["label"], e["start_s"], e["end_s"]) for e in events], keywords
    )
    assert (false_alarms, missed) == (0, 0), (events, keywords)
    assert np.median(errors) <= 0.25 and max(errors) <= 0.5, errors
    assert all(0 <= e["start_s"] < e["end_s"] <= DURATION_S + 0.01 for e in events)


def test_the_file_row_counts_its_events_and_points_at_the_deciding_one(labelled):
    (row,) = pq.read_table(labelled[0]).to_pylist()
    events = read_events(labelled[1])
    assert row["duration_s"] == pytest.approx(DURATION_S, abs=0.01)
    assert row["yes_count"] == sum(e["label"] == "yes" for e in events)
    assert row["no_count"] == sum(e["label"] == "no" for e in events)
    deciding = [
        e
        for e in events
        if (e["start_s"], e["end_s"]) == (row["keyword_start_s"], row["keyword_end_s"])
    ]
    assert len(deciding) == 1 and deciding[0]["label"] == row["label"]
    assert deciding[0]["score"] == pytest.approx(row[f"score_{row['label']}"])
    assert {e["model_version"] for e in events} == {row["model_version"]}


def test_streamed_scores_equal_those_of_the_whole_file(long_call, labelled, keyword_model):
    folder, _ = long_call
    windows = split_windows(read_recording(str(folder / "call.wav")).mono)
    probabilities = keyword_model.predict(windows)
    label, window = keyword_model.decision.label_recording(probabilities)
    (row,) = pq.read_table(labelled[0]).to_pylist()
    assert row["label"] == LABELS[label]
    for column, expected in zip(LABELS, probabilities[window], strict=True):
        assert row[f"score_{column}"] == pytest.approx(expected, abs=1e-5)


def test_a_long_file_is_read_as_runs_of_at_least_the_asked_windows(long_call):
    """Decode blocks of 1.5 s each complete about 3 windows; the reader joins them into runs of
    at least 20 (but for the file's last two runs), which hold the file's windows in order."""
    folder, _ = long_call
    reader = WindowReader(str(folder / "call.wav"), max_duration_s=3600.0, run_windows=20)
    runs = list(reader.runs())
    assert reader.info.error is None
    assert all(run.count >= 20 for run in runs[:-2]) and len(runs) >= 4
    assert runs[-1].count == 1  # the last window, aligned to the end
    windows = np.concatenate([run.windows() for run in runs])
    np.testing.assert_array_equal(
        windows, split_windows(read_recording(str(folder / "call.wav")).mono)
    )


def test_skip_existing_keeps_the_events_of_the_files_it_keeps(long_call, labelled, tmp_path):
    folder, _ = long_call
    labels, events = tmp_path / "labels", tmp_path / "events"
    argv = ["--input", str(folder), "--output", str(labels), "--events", str(events)]
    assert main(argv) == 0
    first = read_events(events)
    assert main([*argv, "--skip_existing"]) == 0
    summary = json.loads((labels / output.SUMMARY_FILE).read_text())
    assert summary["files_kept_from_earlier_output"] == 1
    assert read_events(events) == first
    assert json.loads((events / output.SUMMARY_FILE).read_text())["run_id"] == summary["run_id"]


def test_without_the_events_it_was_committed_with_nothing_is_kept(long_call, tmp_path):
    """An output labelled without --events has no events for its files: with --events, a rerun
    labels them again rather than leave their events out."""
    folder, _ = long_call
    labels = tmp_path / "labels"
    assert main(["--input", str(folder), "--output", str(labels)]) == 0
    argv = ["--input", str(folder), "--output", str(labels), "--skip_existing"]
    assert main([*argv, "--events", str(tmp_path / "events")]) == 0
    summary = json.loads((labels / output.SUMMARY_FILE).read_text())
    assert summary["files_kept_from_earlier_output"] == 0
    assert summary["keyword_events"] == len(read_events(tmp_path / "events")) > 0


@pytest.mark.parametrize("failing", ["events", "labels"])
def test_a_commit_whose_events_or_labels_part_fails_changes_nothing(
    long_call, recordings, tmp_path, monkeypatch, failing
):
    folder, _ = long_call
    labels, events = tmp_path / "labels", tmp_path / "events"
    argv = ["--output", str(labels), "--events", str(events)]
    assert main(["--input", str(folder), *argv]) == 0
    before = (pq.read_table(labels).to_pylist(), read_events(events))
    replace = output._replace_local

    def failing_replace(staging: str, output_dir: str):
        if Path(output_dir).name == failing:
            raise OSError("disk full")
        return replace(staging, output_dir)

    monkeypatch.setattr(output, "_replace_local", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        main(["--input", str(recordings), *argv])
    assert (pq.read_table(labels).to_pylist(), read_events(events)) == before


def test_events_must_be_a_directory_of_their_own(long_call, tmp_path):
    folder, _ = long_call
    argv = ["--input", str(folder), "--output", str(tmp_path / "labels")]
    assert main([*argv, "--events", str(tmp_path / "labels")]) == 2
    assert main([*argv, "--events", str(tmp_path / "labels" / "events")]) == 2
