"""Shared fixtures: the Speech Commands data beside the checkout, the shipped model, WAV writing."""

import os
from pathlib import Path

import pytest

from model.contract import DEFAULT_ARTIFACT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_DIR = Path(
    os.environ.get(
        "SPEECH_COMMANDS_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands",
    )
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "manifest.csv").is_file():
        pytest.fail(f"Speech Commands data not found at {DATA_DIR} (set SPEECH_COMMANDS_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def keyword_model():
    from model.serving import KeywordModel

    return KeywordModel(DEFAULT_ARTIFACT)
