"""Fine-tuning the verifier's embedding: the Keras network is the ONNX one, and what it learns
goes back into the ONNX file that labelling runs."""

import numpy as np
import pytest

from model.contract import DEFAULT_ARTIFACT, LABELS
from model.training.data import load_split
from model.training.embedding_tuning import (
    embedding_network,
    tune,
    tuned_embedding,
    verifier_network,
)
from model.verifier import (
    EMBEDDING_FILE,
    HEAD_FILE,
    MEL_FILE,
    VERIFIER_DIR,
    Head,
    SpeechEmbedding,
    head_features,
)

VERIFIER = DEFAULT_ARTIFACT / VERIFIER_DIR


@pytest.fixture(scope="module")
def verifier_files() -> tuple[bytes, bytes, Head]:
    """The shipped verifier's mel model, embedding model and head."""
    with np.load(VERIFIER / HEAD_FILE) as stored:
        head = Head.from_npz(stored)
    return (VERIFIER / MEL_FILE).read_bytes(), (VERIFIER / EMBEDDING_FILE).read_bytes(), head


@pytest.fixture(scope="module")
def clips(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Every twentieth val clip and its label."""
    waveforms, labels, _ = load_split(data_dir, "val")
    return waveforms[::20], labels[::20]


def test_the_keras_network_computes_what_the_onnx_models_compute(verifier_files, clips):
    mel, embedding_bytes, head = verifier_files
    embedding = SpeechEmbedding(mel, embedding_bytes)
    frames = embedding.mel_frames(clips[0])
    network, _ = embedding_network(embedding_bytes)
    expected = embedding(clips[0])
    np.testing.assert_allclose(network.predict(frames, verbose=0), expected, atol=1e-3, rtol=1e-5)
    full, _, _ = verifier_network(embedding_bytes, head)
    np.testing.assert_allclose(
        full.predict(frames, verbose=0), head.probabilities(head_features(expected)), atol=1e-5
    )


def test_untrained_weights_go_back_unchanged(verifier_files):
    _, embedding_bytes, _ = verifier_files
    _, convolutions = embedding_network(embedding_bytes)
    assert tuned_embedding(embedding_bytes, convolutions) == embedding_bytes


def test_what_tuning_learns_is_what_labelling_runs(verifier_files, clips, tmp_path):
    """Two epochs on a few real clips: the weights move, the ONNX embedding and head written
    back give the Keras network's probabilities, and the checkpoint is gone at the end."""
    mel, embedding_bytes, head = verifier_files
    embedding = SpeechEmbedding(mel, embedding_bytes)
    frames, labels = embedding.mel_frames(clips[0]), clips[1]
    checkpoints = tmp_path / "checkpoint"
    tuned_bytes, tuned_head, fitting = tune(
        embedding_bytes, head, frames, labels, frames, labels, 2, 0, checkpoints
    )
    assert tuned_bytes != embedding_bytes
    assert len(fitting["val_loss"]) == 3  # before tuning, and after each epoch
    assert fitting["kept_epoch"] == int(np.argmin(fitting["val_loss"]))
    assert not checkpoints.exists()
    network, _, _ = verifier_network(tuned_bytes, tuned_head)
    served = tuned_head.probabilities(head_features(SpeechEmbedding(mel, tuned_bytes)(clips[0])))
    np.testing.assert_allclose(network.predict(frames, verbose=0), served, atol=1e-5)
    assert served.shape == (len(labels), len(LABELS))


def test_a_stopped_tuning_resumes_from_its_checkpoint(verifier_files, clips, tmp_path, monkeypatch):
    """The checkpoint of a finished epoch holds what the run needs: started again, the same
    command trains only the epochs left and returns what the run would have kept."""
    from model.training import checkpoint

    mel, embedding_bytes, head = verifier_files
    frames, labels = SpeechEmbedding(mel, embedding_bytes).mel_frames(clips[0]), clips[1]
    checkpoints = tmp_path / "checkpoint"
    monkeypatch.setattr(checkpoint, "remove", lambda directory: None)  # as if stopped at the end
    first = tune(embedding_bytes, head, frames, labels, frames, labels, 1, 0, checkpoints)
    assert (checkpoints / checkpoint.STATE_FILE).is_file()
    again = tune(embedding_bytes, head, frames, labels, frames, labels, 1, 0, checkpoints)
    assert again[0] == first[0] and again[2]["val_loss"] == first[2]["val_loss"]
    with pytest.raises(ValueError, match="other settings"):
        tune(embedding_bytes, head, frames, labels, frames, labels, 2, 0, checkpoints)
