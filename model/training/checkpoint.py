"""Resume a training run from the end of its last finished epoch.

A member trains for an hour or more on two cores, and a process can be stopped midway. After
every epoch `model.training.train` writes what its epoch loop carries to the next epoch into
`<out>.checkpoint/`: the network's and the optimizer's variables (the step count, so the
learning-rate schedule goes on where it was, and Adam's moments), the state of the generator
that draws and augments each epoch's examples, the best epoch so far with its weights, and the
moving average of the weights. The same command started again resumes from it. TensorFlow's
own random ops (dropout, SpecAugment) draw anew after a resume, so a resumed run is a run of
the same recipe, not a bit-identical copy of an uninterrupted one.
"""

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATE_FILE = "state.pkl"


@dataclass
class EpochState:
    """Everything the epoch loop needs to go on after `epochs_done` epochs."""

    epochs_done: int
    weights: list[np.ndarray]  # of the model being fitted (with its word head, if any)
    optimizer: list[np.ndarray]
    generator: dict  # numpy's bit_generator.state
    best_score: float
    best_accuracy: float
    best_balanced: float
    best_epoch: int
    best_weights: list[np.ndarray]
    average: list[np.ndarray] | None
    wall_seconds: float  # of training so far, stopped runs included


def checkpoint_dir(out_dir: Path) -> Path:
    """Where the run writing the artifact `out_dir` keeps its checkpoint: beside it, so that
    writing the artifact never touches it."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


def capture(fitted, generator: np.random.Generator, kind: type = EpochState, **progress):
    """The state of the Keras model `fitted` (compiled and trained at least one step) and of
    `generator`, with the epoch loop's `progress` (the other fields of `kind`: EpochState, or
    another loop's state with `weights`, `optimizer` and `generator` fields)."""
    return kind(
        weights=fitted.get_weights(),
        optimizer=[variable.numpy() for variable in fitted.optimizer.variables],
        generator=generator.bit_generator.state,
        **progress,
    )


def restore(state: EpochState, fitted, generator: np.random.Generator) -> None:
    """Put `state`'s weights and optimizer variables into the compiled model `fitted` and its
    generator state into `generator`."""
    fitted.set_weights(state.weights)
    optimizer = fitted.optimizer
    if not optimizer.built:
        optimizer.build(fitted.trainable_variables)
    if len(optimizer.variables) != len(state.optimizer):
        raise ValueError(
            f"the checkpoint holds {len(state.optimizer)} optimizer variables, the model's"
            f" optimizer has {len(optimizer.variables)}"
        )
    for variable, value in zip(optimizer.variables, state.optimizer, strict=True):
        variable.assign(value)
    generator.bit_generator.state = state.generator


def save(directory: Path, settings: dict, state: EpochState) -> None:
    """Write `state` with the run's `settings` atomically: a stop while writing leaves the
    previous epoch's checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (STATE_FILE + ".partial")
    with partial.open("wb") as file:
        pickle.dump({"settings": settings, "state": state}, file, protocol=5)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, directory / STATE_FILE)


def load(directory: Path, settings: dict) -> EpochState | None:
    """The state saved in `directory` by a run of these `settings`, or None when there is none.
    A checkpoint of other settings is an error, not a silent fresh start or a mixed run."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    with path.open("rb") as file:
        saved = pickle.load(file)  # written by `save` of this module, beside the artifact
    if saved["settings"] != settings:
        differing = sorted(
            key
            for key in saved["settings"].keys() | settings.keys()
            if saved["settings"].get(key) != settings.get(key)
        )
        raise ValueError(
            f"{directory} is the checkpoint of a run with other settings ({', '.join(differing)});"
            " delete it to start this run afresh"
        )
    return saved["state"]


def remove(directory: Path) -> None:
    """Delete a finished run's checkpoint."""
    (directory / STATE_FILE).unlink(missing_ok=True)
    (directory / (STATE_FILE + ".partial")).unlink(missing_ok=True)
    if directory.exists() and not any(directory.iterdir()):
        directory.rmdir()
