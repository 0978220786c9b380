"""The evaluation metrics are plain numpy: checked here on cases whose answer is known; and the
noise clips that the silence checks are made of."""

import numpy as np
import pytest

from model.contract import LABELS
from model.decision import Decision
from model.evaluation.evaluate import (
    NOISE_SWEEP_HOP,
    NOISE_SWEEP_LEVELS_DB,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    keyword_error_metrics,
    noise_sweep_clips,
    precision_recall_curve,
    silence_check,
    softmax,
)
from model.training.data import load_noise, rms


def test_classification_metrics_count_what_was_right():
    true = np.array([0, 0, 1, 1, 2, 3])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    metrics = classification_metrics(true, predicted)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["yes"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert metrics["per_class"]["no"]["precision"] == pytest.approx(2 / 3)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert metrics["confusion_matrix"]["counts"][3] == [0, 0, 1, 0]


def test_false_keyword_rate_counts_non_keywords_labelled_yes_or_no():
    true = np.array([2, 2, 2, 3, 0, 1])
    predicted = np.array([1, 2, 0, 3, 0, 1])
    metrics = keyword_error_metrics(true, predicted, ["go", "bed", "cat", "", "yes", "no"])
    assert metrics["false_keyword_rate"] == pytest.approx(2 / 4)


def test_calibrated_scores_have_near_zero_ece_and_overconfident_ones_do_not():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 20_000)
    correct = rng.random(20_000) < confidence  # right exactly as often as it claims
    probabilities = np.zeros((20_000, 4))
    probabilities[:, 0] = confidence
    probabilities[:, 1:] = ((1 - confidence) / 3)[:, None]
    true = np.where(correct, 0, 1)
    assert expected_calibration_error(probabilities, true) < 0.01
    overconfident = probabilities.copy()
    overconfident[:, 0] = np.minimum(confidence + 0.2, 1.0)
    overconfident[:, 1:] = ((1 - overconfident[:, 0]) / 3)[:, None]
    assert expected_calibration_error(overconfident, true) > 0.1


def test_fit_temperature_undoes_a_known_sharpening():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (5_000, 4))
    true = np.array([rng.choice(4, p=p) for p in softmax(logits)])  # calibrated at T = 1
    assert fit_temperature(logits * 3, true) == pytest.approx(3, rel=0.1)


def test_the_noise_sweep_holds_every_window_of_each_recording_at_each_level(data_dir):
    clips = noise_sweep_clips(data_dir, "val")
    windows = sum((len(s) - 16_000) // NOISE_SWEEP_HOP + 1 for s in load_noise(data_dir, "val"))
    assert clips.shape == (windows * len(NOISE_SWEEP_LEVELS_DB), 16_000)
    levels = 20 * np.log10(rms(clips)[:, 0]).reshape(len(NOISE_SWEEP_LEVELS_DB), windows)
    expected = np.broadcast_to(np.array(NOISE_SWEEP_LEVELS_DB)[:, None], levels.shape)
    np.testing.assert_allclose(levels, expected, atol=0.01)


def test_silence_check_counts_silence_and_keyword_answers():
    answers = np.array([3, 3, 0, 1, 2, 3])

    def predict(clips: np.ndarray) -> np.ndarray:
        return np.eye(len(LABELS), dtype=np.float32)[answers[: len(clips)]]

    checked = silence_check(predict, np.zeros((6, 16_000), np.float32), Decision())
    assert checked == {"clips": 6, "silence": 3, "keyword": 2}


def test_precision_recall_curve_of_the_keyword_decision():
    #                          yes   no   unknown silence
    probabilities = np.array(
        [
            [0.90, 0.05, 0.05, 0.00],  # yes, confident
            [0.60, 0.10, 0.30, 0.00],  # yes, unsure
            [0.70, 0.20, 0.10, 0.00],  # unknown heard as yes
            [0.10, 0.80, 0.10, 0.00],  # no
        ],
        np.float32,
    )
    labels = np.array([0, 0, 2, 1])
    precision, recall = precision_recall_curve(
        probabilities, labels, "yes", np.array([0.5, 0.65, 0.95])
    )
    np.testing.assert_allclose(precision, [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(recall, [1.0, 1 / 2, 0.0])
