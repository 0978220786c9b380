"""The shipped model, through the real pipeline, on a fixed sample of the held-out test speakers."""

from pathlib import Path

import numpy as np
import pytest

from model.data import read_audio, read_manifest, silence_windows
from pipeline.cli import main
from tests.helpers import read_output, write_wav

UNKNOWN_SAMPLE = 160  # of 337 test `unknown` clips, every `go` among them kept
SILENCE_SAMPLE = 40
SEED = 2026
# The shipped ensemble on this sample: accuracy 0.974, yes 85/87, no 91/92, 7 of the 200 unknown
# and silence files called a keyword (all 106 `go` clips are in it). The floors leave a few clips.
ACCURACY_FLOOR = 0.96
KEYWORD_RECALL_FLOOR = 0.96
FALSE_KEYWORD_CEILING = 0.06
SHORT_NOISE_SAMPLES = 9_600  # 0.6 s: padded with 0.2 s of zeros on each side
SHORT_NOISE_SILENCE_FLOOR = 0.95


@pytest.fixture(scope="module")
def test_sample(tmp_path_factory, data_dir) -> tuple[Path, dict[str, str]]:
    """All test `yes` and `no`, the `go` clips, a seeded sample of other words, and silence,
    written as 16-bit WAV; returns the folder and each file's true label."""
    folder = tmp_path_factory.mktemp("test_sample")
    rows = [row for row in read_manifest(data_dir) if row.split == "test"]
    keywords = [row for row in rows if row.label in ("yes", "no")]
    go = [row for row in rows if row.word == "go"]
    others = [row for row in rows if row.label == "unknown" and row.word != "go"]
    rng = np.random.default_rng(SEED)
    picked = rng.choice(len(others), UNKNOWN_SAMPLE - len(go), replace=False)
    truth = {}
    for row in keywords + go + [others[i] for i in sorted(picked)]:
        path = folder / row.label / (row.path.replace("/", "_").removesuffix(".flac") + ".wav")
        write_wav(path, read_audio(data_dir / row.path), 16_000)
        truth[str(path)] = row.label
    for index, clip in enumerate(silence_windows(data_dir, "test", SILENCE_SAMPLE, seed=SEED)):
        path = write_wav(folder / "silence" / f"noise_{index:03d}.wav", clip, 16_000)
        truth[str(path)] = "silence"
    return folder, truth


def test_pipeline_accuracy_on_held_out_speakers(test_sample, tmp_path):
    folder, truth = test_sample
    assert len(truth) >= 300 and set(truth.values()) == {"yes", "no", "unknown", "silence"}
    assert main(["--input", str(folder), "--output", str(tmp_path / "out")]) == 0
    rows = read_output(tmp_path / "out")
    assert sorted(row["path"] for row in rows) == sorted(truth)
    predicted = {row["path"]: row["label"] for row in rows}
    accuracy = np.mean([predicted[path] == label for path, label in truth.items()])
    assert accuracy >= ACCURACY_FLOOR
    for keyword in ("yes", "no"):
        paths = [path for path, label in truth.items() if label == keyword]
        recall = np.mean([predicted[path] == keyword for path in paths])
        assert recall >= KEYWORD_RECALL_FLOOR, (keyword, recall)
    others = [path for path, label in truth.items() if label in ("unknown", "silence")]
    false_keywords = np.mean([predicted[path] in ("yes", "no") for path in others])
    assert false_keywords <= FALSE_KEYWORD_CEILING


@pytest.mark.xfail(
    strict=True,
    reason="known defect of the shipped model: most 0.6 s noise files come out `unknown`"
    " (model/README.md, Known limits); strict, so a model that fixes it must drop this mark",
)
def test_short_noise_recordings_are_silence(tmp_path, data_dir):
    """Noise files shorter than a second reach the model zero-padded; the padding must not make
    them sound like speech."""
    clips = silence_windows(data_dir, "test", SILENCE_SAMPLE, seed=SEED + 1)
    folder = tmp_path / "short_noise"
    for index, clip in enumerate(clips):
        write_wav(folder / f"noise_{index:03d}.wav", clip[:SHORT_NOISE_SAMPLES], 16_000)
    assert main(["--input", str(folder), "--output", str(tmp_path / "out")]) == 0
    labels = [row["label"] for row in read_output(tmp_path / "out")]
    assert len(labels) == SILENCE_SAMPLE
    assert "yes" not in labels and "no" not in labels
    assert labels.count("silence") >= SHORT_NOISE_SILENCE_FLOOR * SILENCE_SAMPLE, labels
