"""Training targets: plain one-hot labels, or mixed with teachers' probabilities (distillation)."""

import numpy as np
import pytest

from model.audio import pad_to_clip
from model.contract import LABELS
from model.train import DISTILLATION_WEIGHT, distillation_targets
from tests.helpers import first_test_clip


def test_targets_without_teachers_are_one_hot():
    targets = distillation_targets(np.array([3, 0, 2, 1]), np.zeros((4, 16_000), np.float32), [])
    np.testing.assert_array_equal(targets, np.eye(len(LABELS), dtype=np.float32)[[3, 0, 2, 1]])


def test_targets_mix_the_mean_of_the_teachers_probabilities(keyword_model, data_dir):
    words = ["yes", "no", "go"]
    waveforms = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = np.array([LABELS.index(word if word != "go" else "unknown") for word in words])
    # The same teacher twice: the mean of identical probabilities is those probabilities.
    targets = distillation_targets(labels, waveforms, [keyword_model, keyword_model])
    taught = keyword_model.predict(waveforms)
    expected = (1 - DISTILLATION_WEIGHT) * np.eye(len(LABELS))[labels]
    np.testing.assert_allclose(targets, expected + DISTILLATION_WEIGHT * taught, atol=1e-6)
    assert targets.sum(axis=1) == pytest.approx(np.ones(len(words)), abs=1e-5)
    # The teacher knows these clips, so the target still points at the true class.
    assert list(targets.argmax(axis=1)) == list(labels)
