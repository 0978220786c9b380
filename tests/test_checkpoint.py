"""A training run stopped after an epoch resumes from its checkpoint where it was: the same
weights, optimizer moments and step count, and the same next epoch of examples."""

from pathlib import Path

import numpy as np
import pytest

from model.training.checkpoint import (
    EpochState,
    capture,
    checkpoint_dir,
    load,
    remove,
    restore,
    save,
)

SETTINGS = {"seed": "0", "epochs": "20", "architecture": "'ds-cnn-m'"}


def compiled_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return model


def progress(epochs_done: int) -> dict:
    return {
        "epochs_done": epochs_done,
        "best_score": 0.5,
        "best_accuracy": 0.9,
        "best_balanced": 0.8,
        "best_epoch": epochs_done,
        "best_weights": [np.ones(3)],
        "average": None,
        "wall_seconds": 12.5,
    }


def fit_epoch(model, generator: np.random.Generator) -> None:
    """One epoch whose examples come from `generator`, as model.training.train draws them."""
    inputs = generator.standard_normal((32, 8)).astype(np.float32)
    model.fit(inputs, inputs[:, :4] * 2, batch_size=8, epochs=1, verbose=0, shuffle=False)


def test_a_resumed_run_goes_on_as_the_uninterrupted_one(tmp_path: Path):
    uninterrupted, generator = compiled_model(0), np.random.default_rng(3)
    for _ in range(3):
        fit_epoch(uninterrupted, generator)

    stopped, stopped_generator = compiled_model(0), np.random.default_rng(3)
    fit_epoch(stopped, stopped_generator)
    directory = checkpoint_dir(tmp_path / "member")
    save(directory, SETTINGS, capture(stopped, stopped_generator, **progress(1)))

    resumed, resumed_generator = compiled_model(1), np.random.default_rng(99)
    state = load(directory, SETTINGS)
    assert state.epochs_done == 1 and state.wall_seconds == 12.5
    restore(state, resumed, resumed_generator)
    assert int(resumed.optimizer.iterations.numpy()) == 4  # 32 examples in batches of 8
    for _ in range(2):
        fit_epoch(resumed, resumed_generator)

    for expected, actual in zip(uninterrupted.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_no_checkpoint_is_a_fresh_start_and_a_finished_run_removes_it(tmp_path: Path):
    directory = checkpoint_dir(tmp_path / "member")
    assert directory == tmp_path / "member.checkpoint"
    assert load(directory, SETTINGS) is None
    model, generator = compiled_model(0), np.random.default_rng(0)
    fit_epoch(model, generator)
    save(directory, SETTINGS, capture(model, generator, **progress(1)))
    assert isinstance(load(directory, SETTINGS), EpochState)
    remove(directory)
    assert not directory.exists()


def test_a_checkpoint_of_other_settings_is_refused_by_name(tmp_path: Path):
    directory = checkpoint_dir(tmp_path / "member")
    model, generator = compiled_model(0), np.random.default_rng(0)
    fit_epoch(model, generator)
    save(directory, SETTINGS, capture(model, generator, **progress(1)))
    with pytest.raises(ValueError, match="other settings \\(epochs, seed\\)"):
        load(directory, SETTINGS | {"seed": "1", "epochs": "30"})
