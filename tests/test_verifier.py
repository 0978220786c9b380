"""The second stage: the speech embedding re-hears the keyword candidates, and only them."""

import json
import shutil

import numpy as np
import pytest

from model.context import CANDIDATE_FLOOR
from model.contract import DEFAULT_ARTIFACT, LABELS, METADATA_FILE
from model.export.artifact import model_version, store_verifier
from model.serving import ONNX_FILE, KeywordModel, onnx_predictor
from model.training import train_verifier
from model.training.data import load_split
from model.training.train_verifier import copy_verifier
from model.verifier import (
    EMBEDDING_FILE,
    EMBEDDING_FRAMES,
    EMBEDDING_STEP,
    HEAD_FILE,
    MEL_FILE,
    SLIDING_FILE,
    VERIFIER_DIR,
    SpeechEmbedding,
    candidates,
    fuse,
    session,
    sliding_embedding_model,
    stored_sliding_session,
)

VERIFIER = DEFAULT_ARTIFACT / VERIFIER_DIR


@pytest.fixture(scope="module")
def val_clips(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Every tenth val clip (all words and silence) and its label."""
    waveforms, labels, _ = load_split(data_dir, "val")
    return waveforms[::10], labels[::10]


def test_fusion_is_a_renormalised_weighted_geometric_mean():
    networks = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.9, 0.04, 0.01]], np.float32)
    head = np.array([[0.1, 0.1, 0.7, 0.1], [0.01, 0.97, 0.01, 0.01]], np.float32)
    np.testing.assert_allclose(fuse(networks, head, 0.0), networks, atol=1e-6)
    np.testing.assert_allclose(fuse(networks, head, 1.0), head, atol=1e-6)
    fused = fuse(networks, head, 0.5)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0, atol=1e-6)
    expected = np.sqrt(networks * head)
    np.testing.assert_allclose(fused, expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
    # The two agree that the second row is `no`: it stays `no`, surer than either alone.
    assert fused[1, 1] > 0.9 and fused[0].argmax() in (0, 2)


def test_a_clip_embeds_the_same_alone_or_in_a_batch(val_clips):
    """openWakeWord's mel model scales its output to the loudest frame of a call; the
    embedding must not let one clip's loudness change another's features."""
    embedding = SpeechEmbedding(
        (VERIFIER / MEL_FILE).read_bytes(), (VERIFIER / EMBEDDING_FILE).read_bytes()
    )
    clips = val_clips[0][:12]
    together = embedding(clips)
    alone = np.concatenate([embedding(clips[i : i + 1]) for i in range(len(clips))])
    assert together.shape == (12, 6, 96)
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_one_pass_gives_each_windows_embedding_as_its_own_pass_does():
    """The sliding embedding model against openWakeWord's own run on each 76-frame window of
    the mel frames, for a clip's 121 frames and other lengths: the same values, bit for bit."""
    original = (VERIFIER / EMBEDDING_FILE).read_bytes()
    per_window, sliding = session(original, 1), session(sliding_embedding_model(original), 1)
    rng = np.random.default_rng(0)
    for frames in (121, 117, 76):
        mel = rng.normal(1.0, 1.0, (3, frames, 32, 1)).astype(np.float32)
        starts = range(0, frames - EMBEDDING_FRAMES + 1, EMBEDDING_STEP)
        expected = np.stack(
            [
                per_window.run(None, {"input_1": mel[:, s : s + EMBEDDING_FRAMES]})[0]
                for s in starts
            ],
            axis=1,
        ).reshape(3, len(starts), 96)
        np.testing.assert_array_equal(sliding.run(None, {"input_1": mel})[0], expected)


def test_a_stored_sliding_model_of_other_weights_is_refused_and_rebuilt(val_clips, tmp_path):
    """The artifact's SLIDING_FILE is derived, outside the model version: one that does not
    give the embedding model's values is not used."""
    import onnx
    from onnx import numpy_helper

    original = (VERIFIER / EMBEDDING_FILE).read_bytes()
    other = onnx.load_from_string(original)
    first_convolution = next(node for node in other.graph.node if node.op_type == "Conv")
    weights = next(i for i in other.graph.initializer if i.name == first_convolution.input[1])
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
    wrong = sliding_embedding_model(other.SerializeToString())
    assert stored_sliding_session((VERIFIER / SLIDING_FILE).read_bytes(), original) is not None
    assert stored_sliding_session(wrong, original) is None
    assert stored_sliding_session(b"not a model", original) is None
    mel = (VERIFIER / MEL_FILE).read_bytes()
    clips = val_clips[0][:4]
    np.testing.assert_array_equal(
        SpeechEmbedding(mel, original, sliding_bytes=wrong)(clips),
        SpeechEmbedding(mel, original)(clips),
    )


def test_only_keyword_candidates_are_reheard(val_clips):
    """The shipped model's probabilities: the networks' (model.onnx) for every window that is
    not a keyword candidate, and their fusion with the head's for those that are."""
    waveforms, labels = val_clips
    model = KeywordModel(DEFAULT_ARTIFACT)
    networks = onnx_predictor((DEFAULT_ARTIFACT / ONNX_FILE).read_bytes())(waveforms)
    served = model.predict(waveforms)
    chosen = candidates(networks, model._verifier.candidate_floor)
    assert chosen[np.isin(labels, [LABELS.index("yes"), LABELS.index("no")])].mean() > 0.9
    assert chosen[labels == LABELS.index("silence")].mean() < 0.05
    np.testing.assert_array_equal(served[~chosen], networks[~chosen])
    heard = model._verifier.head_probabilities(waveforms[chosen])
    weight = model._verifier.head_weight
    np.testing.assert_allclose(served[chosen], fuse(networks[chosen], heard, weight), atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


def test_the_artifacts_candidate_floor_sets_which_windows_are_reheard(val_clips, tmp_path):
    """A lower floor in metadata.json's `verifier`: more windows re-heard, each of them fused,
    the others the networks' own; and a new model version."""
    waveforms, _ = val_clips
    copy = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, copy)
    described = json.loads((copy / METADATA_FILE).read_text())["verifier"]
    floor = described.get("candidate_floor", CANDIDATE_FLOOR) / 2
    shipped = KeywordModel(DEFAULT_ARTIFACT)
    assert store_verifier(copy, described | {"candidate_floor": floor}) != shipped.version
    networks = onnx_predictor((DEFAULT_ARTIFACT / ONNX_FILE).read_bytes())(waveforms)
    chosen = candidates(networks, floor)
    assert chosen.sum() > candidates(networks, floor * 2).sum()
    served = KeywordModel(copy).predict(waveforms)
    np.testing.assert_array_equal(served[~chosen], networks[~chosen])
    heard = shipped._verifier.head_probabilities(waveforms[chosen])
    weight = shipped._verifier.head_weight
    np.testing.assert_allclose(served[chosen], fuse(networks[chosen], heard, weight), atol=1e-5)


def test_a_copied_verifier_keeps_its_floor_unless_given_one(tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, copy)
    shipped = json.loads((DEFAULT_ARTIFACT / METADATA_FILE).read_text())
    assert copy_verifier(DEFAULT_ARTIFACT, copy, None) == shipped["model_version"]
    copy_verifier(DEFAULT_ARTIFACT, copy, 0.1)
    described = json.loads((copy / METADATA_FILE).read_text())["verifier"]
    assert described["candidate_floor"] == 0.1 and ">= 0.1)" in described["fusion"]
    assert KeywordModel(copy)._verifier.candidate_floor == 0.1


def test_a_head_weight_without_tuning_is_refused_not_ignored(monkeypatch, tmp_path, capsys):
    copy = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, copy)
    argv = ["train_verifier", "--artifact", str(copy), "--copy-from", str(DEFAULT_ARTIFACT)]
    monkeypatch.setattr("sys.argv", [*argv, "--head-weight", "0.6"])
    with pytest.raises(SystemExit) as refused:
        train_verifier.main()
    assert refused.value.code == 2 and "--tune-embedding" in capsys.readouterr().err
    assert (copy / METADATA_FILE).read_bytes() == (DEFAULT_ARTIFACT / METADATA_FILE).read_bytes()


def test_the_verifier_sets_no_apart_from_down_better_than_the_networks(data_dir):
    """Every val `no` and `down` clip: the head alone tells them apart better than the networks
    (the share of the pairs of a `no` and a `down` clip that its `no` probability orders
    right), which is what it is there for."""
    waveforms, _, paths = load_split(data_dir, "val")
    words = np.array([path.split("/")[0] for path in paths])
    chosen = np.isin(words, ["no", "down"])
    model = KeywordModel(DEFAULT_ARTIFACT)
    networks = onnx_predictor((DEFAULT_ARTIFACT / ONNX_FILE).read_bytes())(waveforms[chosen])
    heard = model._verifier.head_probabilities(waveforms[chosen])
    is_no = words[chosen] == "no"

    def ordered_right(p_no: np.ndarray) -> float:
        return float(np.mean(p_no[is_no][:, None] > p_no[~is_no][None, :]))

    assert ordered_right(heard[:, 1]) > ordered_right(networks[:, 1])


def test_the_model_version_covers_the_verifier(tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, copy)
    shipped = json.loads((copy / METADATA_FILE).read_text())["model_version"]
    assert model_version(copy) == shipped
    with np.load(copy / VERIFIER_DIR / HEAD_FILE) as stored:
        arrays = dict(stored)
    arrays["bias_2"] = arrays["bias_2"] + 0.1
    np.savez(copy / VERIFIER_DIR / HEAD_FILE, **arrays)
    assert model_version(copy) != shipped
