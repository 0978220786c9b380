"""Training examples: class balance, hard negatives and short silence of an epoch; targets, plain
one-hot or mixed with teachers' probabilities (distillation)."""

import numpy as np
import pytest

from model.audio import pad_to_clip
from model.contract import LABELS
from model.data import SHORT_RECORDING_SAMPLES, SILENCE_LABEL, load_noise, shorten
from model.train import (
    AUGMENTATION,
    DISTILLATION_WEIGHT,
    KEYWORD_CLIPS_PER_EPOCH,
    SILENCE_CLIPS_PER_EPOCH,
    distillation_targets,
    epoch_examples,
)
from tests.helpers import first_test_clip


@pytest.mark.parametrize(
    ("hard_negatives", "unknown_examples"), [(("go",), 4 + 1), (("go", "down"), 4 + 2)]
)
def test_an_epoch_balances_keywords_and_draws_hard_negatives_twice(
    data_dir, hard_negatives, unknown_examples
):
    words = ["yes", "no", "go", "down", "cat", "left"]
    speech = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = np.array([LABELS.index(w) if w in ("yes", "no") else 2 for w in words])
    noise = load_noise(data_dir, "train")
    waveforms, targets = epoch_examples(
        speech, labels, words, noise, np.random.default_rng(0), AUGMENTATION, hard_negatives
    )
    expected = [KEYWORD_CLIPS_PER_EPOCH] * 2 + [unknown_examples, SILENCE_CLIPS_PER_EPOCH]
    assert list(np.bincount(targets, minlength=len(LABELS))) == expected
    assert waveforms.shape == (sum(expected), 16_000)
    assert np.abs(waveforms).max() <= 1.0


def test_a_shortened_clip_is_a_piece_of_it_padded_evenly_like_a_short_recording():
    clips = np.random.default_rng(0).standard_normal((50, 16_000)).astype(np.float32)
    shortened = shorten(clips, np.random.default_rng(1))
    for clip, short in zip(clips, shortened, strict=True):
        kept = np.flatnonzero(short)
        length = len(kept)
        assert SHORT_RECORDING_SAMPLES[0] <= length < SHORT_RECORDING_SAMPLES[1]
        assert kept[0] == (16_000 - length) // 2 and kept[-1] == kept[0] + length - 1
        start = int(np.flatnonzero(clip == short[kept[0]])[0])
        np.testing.assert_array_equal(short, pad_to_clip(clip[start : start + length]))


@pytest.mark.parametrize(("share", "padded_low", "padded_high"), [(0.0, 0.0, 0.1), (1.0, 1.0, 1.0)])
def test_short_silence_pads_that_share_of_the_silence_windows(
    data_dir, share, padded_low, padded_high
):
    words = ["yes", "no", "go"]
    speech = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = np.array([0, 1, 2])
    augmentation = AUGMENTATION | {"short_silence_share": share, "band_limit_probability": 0.0}
    waveforms, targets = epoch_examples(
        speech, labels, words, load_noise(data_dir, "train"), np.random.default_rng(0), augmentation
    )
    silence = waveforms[targets == SILENCE_LABEL]
    min_padding = (16_000 - SHORT_RECORDING_SAMPLES[1]) // 2
    padded = np.mean(~silence[:, :min_padding].any(axis=1) & ~silence[:, -min_padding:].any(axis=1))
    # Without shortening only the digital-zero windows (7.5% of silence) have silent edges.
    assert padded_low <= padded <= padded_high


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
