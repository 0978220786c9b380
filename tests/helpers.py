"""Test helpers: writing recordings, reading the output back, comparing runs."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from model.contract import LABELS
from model.training.data import read_audio, read_manifest
from pipeline.labels import ROW_SCHEMA


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine wave, float32 mono."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate, subtype=subtype, format="WAV")
    return path


def first_test_clip(data_dir: Path, word: str) -> np.ndarray:
    row = next(r for r in read_manifest(data_dir) if r.split == "test" and r.word == word)
    return read_audio(data_dir / row.path)


def wav_files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*") if path.suffix.lower() == ".wav")


def read_output(output: Path) -> list[dict]:
    table = pq.read_table(output)
    assert table.schema.remove_metadata() == ROW_SCHEMA.remove_metadata()
    return sorted(table.to_pylist(), key=lambda row: row["path"])


def assert_same_rows(rows: list[dict], reference: list[dict], tolerance: float = 1e-5) -> None:
    """Same paths, labels and errors, and scores equal to `tolerance`."""
    assert [row["path"] for row in rows] == [row["path"] for row in reference]
    for row, expected in zip(rows, reference, strict=True):
        assert (row["label"], row["error"]) == (expected["label"], expected["error"])
        for label in LABELS:
            score = expected[f"score_{label}"]
            assert row[f"score_{label}"] == (
                None if score is None else pytest.approx(score, abs=tolerance)
            )
