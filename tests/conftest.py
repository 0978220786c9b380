"""Shared fixtures: the Speech Commands data beside the checkout, the shipped model, and a
folder of real and broken recordings."""

import os
from pathlib import Path

import numpy as np
import pytest
import soxr

from model.contract import DEFAULT_ARTIFACT
from tests.helpers import first_test_clip, tone, write_wav

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_DIR = Path(
    os.environ.get(
        "SPEECH_COMMANDS_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands",
    )
)

# The modules that take a minute or more, started first: the workers (pytest.ini) take modules
# in the order collected, so the suite does not end waiting on one long module alone.
LONGEST_MODULES = (
    "test_training.py",
    "test_flaky_buckets.py",
    "test_commit_faults.py",
    "test_stopping.py",
    "test_training_path.py",
    "test_runners.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "manifest.csv").is_file():
        pytest.fail(f"Speech Commands data not found at {DATA_DIR} (set SPEECH_COMMANDS_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def keyword_model():
    from model.serving import KeywordModel

    return KeywordModel(DEFAULT_ARTIFACT)


@pytest.fixture(scope="session")
def recordings(tmp_path_factory, data_dir) -> Path:
    """Real test-split words in many formats, a long recording, silence, and broken files."""
    folder = tmp_path_factory.mktemp("recordings")
    yes, no, go = (first_test_clip(data_dir, word) for word in ("yes", "no", "go"))
    resampled_yes = soxr.resample(yes, 16_000, 44_100)
    write_wav(folder / "yes_16k.wav", yes, 16_000)
    write_wav(
        folder / "yes_44k_stereo.wav", np.stack([resampled_yes] * 2, axis=1), 44_100, "PCM_24"
    )
    write_wav(folder / "nested" / "deeper" / "NO_UPPER.WAV", no, 16_000, "FLOAT")
    write_wav(folder / "go.wav", go, 16_000, "PCM_32")
    padding = np.zeros(40_000, np.float32)
    write_wav(folder / "no_late_in_6s.wav", np.concatenate([padding, no, padding]), 16_000)
    write_wav(folder / "hum.wav", tone(50, 0.3, 8_000, amplitude=0.01), 8_000, "PCM_U8")
    (folder / "notes.txt").write_text("not audio, and not named .wav: ignored")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("hello, I am a text file\n" * 20)
    (folder / "truncated.wav").write_bytes((folder / "yes_16k.wav").read_bytes()[:30])
    write_wav(folder / "no_frames.wav", np.zeros(0, np.float32), 16_000)
    write_wav(folder / "nan.wav", np.array([0.0, np.nan, 0.1] * 100, np.float32), 16_000, "FLOAT")
    return folder
