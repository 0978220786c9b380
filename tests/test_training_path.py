"""The scripts that make the shipped artifact, end to end at a tiny size: train a two-member
ensemble (one member fine-tuned) for one epoch on a few dozen real clips, combine it, choose its
decision on val, export SavedModel + ONNX, evaluate it, then label a folder with it through the
CLI. The sizes are cut (epochs, draws per epoch, evaluation sets); the code path is the real one.
"""

import csv
import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from model.contract import LABELS, METADATA_FILE
from model.serving import ONNX_FILE, KeywordModel
from pipeline.cli import main
from tests.helpers import read_output

CLIPS_PER_WORD = {"yes": 14, "no": 14, "go": 6, "down": 6, "up": 6, "left": 6, "_silence_": 4}


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv") as file:
        return list(csv.DictReader(file))


def linked_subset(source: Path, rows: list[dict[str, str]], folder: Path) -> Path:
    """`folder` holding `rows` of the data set in `source` (linked) and their manifest.csv."""
    for row in rows:
        link = folder / row["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((source / row["path"]).resolve())
    with open(folder / "manifest.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def tiny_data(data_dir, tmp_path_factory) -> Path:
    """A Speech Commands folder of a few clips per word and split, linked to the shared data."""
    rows = manifest_rows(data_dir)
    chosen = [row for row in rows if row["split"] == "noise"]
    for split in ("train", "val", "test"):
        for word, count in CLIPS_PER_WORD.items():
            chosen += [r for r in rows if r["split"] == split and r["word"] == word][:count]
    folder = tmp_path_factory.mktemp("tiny_data")
    for name in ("LICENSE", "README.md"):
        (folder / name).symlink_to(data_dir / name)
    return linked_subset(data_dir, chosen, folder)


@pytest.fixture(scope="module")
def tiny_read_speech(data_dir, tmp_path_factory) -> Path:
    """The read-speech set beside the Speech Commands data, cut to three recordings per split."""
    read_speech = data_dir.parent / "read_speech"
    rows = manifest_rows(read_speech)
    chosen = [
        row
        for split in ("train", "val", "test")
        for row in [r for r in rows if r["split"] == split][:3]
    ]
    return linked_subset(read_speech, chosen, tmp_path_factory.mktemp("tiny_read_speech"))


@pytest.fixture
def tiny_sizes(monkeypatch):
    """Epoch draws and evaluation sets cut to a few examples each."""
    from model.evaluation import evaluate, thresholds
    from model.training import ensemble, train

    for name, value in {
        "KEYWORD_CLIPS_PER_EPOCH": 24,
        "SILENCE_CLIPS_PER_EPOCH": 16,
        "MIN_DRAWS_PER_WORD": 2,
        "READ_SPEECH_WINDOWS_PER_EPOCH": 16,
        "SYNTHETIC_SENTENCE_WINDOWS_PER_EPOCH": 8,
        "SYNTHETIC_KEYWORDS_PER_WORD": 6,
        "SYNTHETIC_NON_KEYWORDS": 8,
        "SYNTHETIC_SENTENCES": 4,
        "SYNTHETIC_KEYWORDS_PER_EPOCH": 4,
        "SYNTHETIC_PHRASES_PER_WORD": 4,
        "SYNTHETIC_NON_KEYWORDS_PER_EPOCH": 4,
    }.items():
        monkeypatch.setattr(train, name, value)
    monkeypatch.setattr(thresholds, "LONG_RECORDINGS", 2)
    monkeypatch.setattr(thresholds, "MIN_WORD_CLIPS", 3)
    monkeypatch.setattr(thresholds, "GRID", thresholds.GRID[::6])
    for module in (thresholds, evaluate):
        answers, speech = module.spoken_answers, module.continuous_speech
        monkeypatch.setattr(
            module,
            "spoken_answers",
            functools.partial(answers, synthetic=8, assembled=8, with_speech=8, flite=8),
        )
        monkeypatch.setattr(
            module,
            "continuous_speech",
            functools.partial(speech, readings=1, chains=2, chain_seconds=5.0),
        )
    first, second = ensemble.MEMBERS[:2]
    tiny = [
        replace(first, epochs=1, fine_tuning=None),
        replace(
            second,
            epochs=1,
            fine_tuning=replace(second.fine_tuning, epochs=1)
            if second.fine_tuning
            else ensemble.FineTuning(epochs=1, peak_learning_rate=1e-3, non_speech_share=0.3),
        ),
    ]
    monkeypatch.setattr(ensemble, "MEMBERS", tiny)


def test_the_training_path_makes_an_artifact_the_labeller_serves(
    tiny_data, tiny_read_speech, tiny_sizes, recordings, tmp_path
):
    from model.training import ensemble

    members = ensemble.train_members(
        tiny_data, tmp_path / "members", seed=0, read_speech_dir=tiny_read_speech
    )
    assert [path.name for path in members] == [
        ensemble.MEMBERS[0].architecture,
        f"{ensemble.MEMBERS[1].architecture}-tuned",
    ]
    for path, recipe in zip(members, ensemble.MEMBERS, strict=True):
        training = json.loads((path / METADATA_FILE).read_text())["training"]
        assert training["augmentation"]["babble_share"] == recipe.babble_share
        assert training["augmentation"]["speed_share"] == recipe.speed_share
        assert training["augmentation"]["reverb_share"] == recipe.reverb_share
        assert training["per_epoch"]["unknown"].endswith(", ".join(recipe.hard_negatives))
    tuning = ensemble.MEMBERS[1].fine_tuning
    tuned = json.loads((members[1] / METADATA_FILE).read_text())["training"]
    base = KeywordModel(tmp_path / "members" / ensemble.MEMBERS[1].architecture).version
    assert tuned["initialised_from"] == base
    assert tuned["augmentation"]["non_speech_share"] == tuning.non_speech_share
    assert tuned["optimizer"].startswith(f"Adam, cosine decay from {tuning.peak_learning_rate}")
    artifact = tmp_path / "artifact"
    ensemble.combine(members, artifact, tiny_data, tiny_read_speech)

    metadata = json.loads((artifact / METADATA_FILE).read_text())
    assert metadata["labels"] == list(LABELS) and (artifact / ONNX_FILE).is_file()
    assert set(metadata["decision"]["thresholds"]) == {"yes", "no"}
    assert "metrics" in metadata and metadata["training"]["members"]
    model = KeywordModel(artifact)
    assert model.version == metadata["model_version"]

    out = tmp_path / "labelled"
    argv = ["--input", str(recordings), "--output", str(out), "--model", str(artifact), "--quiet"]
    assert main(argv) == 0
    rows = read_output(out)
    assert rows and {row["model_version"] for row in rows} == {model.version}
    assert all(row["label"] in LABELS for row in rows if row["error"] is None)


def test_refreshing_the_shipped_ensemble_fine_tunes_each_member_from_its_own_weights(
    tiny_data, tiny_read_speech, tiny_sizes, monkeypatch, tmp_path
):
    """`ensemble --start-from`: the shipped networks split into artifacts that give, averaged,
    what the shipped model gives on real clips; each then fine-tuned from its own weights with
    its recipe's choices (one epoch here)."""
    import numpy as np

    from model.contract import DEFAULT_ARTIFACT
    from model.serving import TOLERANCE, saved_model_predictor
    from model.training import ensemble
    from model.training.data import load_split

    monkeypatch.setattr(ensemble, "REFRESH_EPOCHS", 1)
    members_dir = tmp_path / "members"
    refreshed = ensemble.train_members(
        tiny_data, members_dir, 0, tiny_read_speech, start_from=DEFAULT_ARTIFACT
    )

    recipes = ensemble.MEMBERS
    assert [path.name for path in refreshed] == [f"{r.architecture}-refreshed" for r in recipes]
    starts = [members_dir / f"{recipe.architecture}-start" for recipe in recipes]
    clips = load_split(tiny_data, "val")[0]
    split = np.mean([KeywordModel(start).predict(clips) for start in starts], axis=0)
    shipped = saved_model_predictor(str(DEFAULT_ARTIFACT))(clips)  # the networks alone
    assert np.max(np.abs(split - shipped)) <= TOLERANCE
    for path, start, recipe in zip(refreshed, starts, recipes, strict=True):
        training = json.loads((path / METADATA_FILE).read_text())["training"]
        assert training["initialised_from"] == KeywordModel(start).version
        assert training["epochs"] == 1 and training["optimizer"].startswith(
            f"Adam, cosine decay from {ensemble.REFRESH_PEAK_LEARNING_RATE}"
        )
        assert training["augmentation"]["babble_share"] == recipe.babble_share
        tuning = recipe.fine_tuning
        assert training["augmentation"]["non_speech_share"] == (
            tuning.non_speech_share if tuning else 0.0
        )


def test_refreshing_one_network_is_refused_with_the_command_that_fine_tunes_it(tmp_path):
    from model.training import ensemble

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / METADATA_FILE).write_text(json.dumps({"architecture": {"name": "ds-cnn-m"}}))
    with pytest.raises(ValueError, match="not an ensemble: use train --init"):
        ensemble.split_members(artifact, tmp_path / "members", ["ds-cnn-m"])


def test_tuning_the_verifier_writes_an_artifact_the_labeller_serves(
    tiny_data, tiny_read_speech, monkeypatch, tmp_path
):
    """`train_verifier --tune-embedding` on a copy of the shipped artifact, with the head's
    examples cut to the tiny data: a tuned embedding, the licence's notice beside it, a new
    model version that KeywordModel opens, and no second tuning of the same verifier."""
    import shutil

    from model.contract import DEFAULT_ARTIFACT
    from model.training import train_verifier
    from model.verifier import EMBEDDING_FILE, NOTICE_FILE, VERIFIER_DIR

    for name in ("SILENCE_WINDOWS", "NON_SPEECH_WINDOWS", "READ_SPEECH_WINDOWS"):
        monkeypatch.setattr(train_verifier, name, 8)
    artifact = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, artifact)
    shipped = json.loads((artifact / METADATA_FILE).read_text())
    version = train_verifier.tune_verifier(artifact, tiny_data, tiny_read_speech, 1, 0, 0.6)

    described = json.loads((artifact / METADATA_FILE).read_text())["verifier"]
    assert version != shipped["model_version"] and described["head_weight"] == 0.6
    assert described["embedding_tuning"]["epochs_run"] == 1
    verifier = artifact / VERIFIER_DIR
    assert (verifier / EMBEDDING_FILE).read_bytes() != (
        DEFAULT_ARTIFACT / VERIFIER_DIR / EMBEDDING_FILE
    ).read_bytes() or described["embedding_tuning"]["kept_epoch"] == 0
    assert "fine-tuned" in (verifier / NOTICE_FILE).read_text()
    model = KeywordModel(artifact)
    assert model.version == version and model._verifier.head_weight == 0.6
    with pytest.raises(ValueError, match="tuned already"):
        train_verifier.tune_verifier(artifact, tiny_data, tiny_read_speech, 1)
