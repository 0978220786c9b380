"""Load the exported model with plain TensorFlow and score batches of waveforms."""

import json
from pathlib import Path

import numpy as np

from model.contract import (
    CLIP_SAMPLES,
    DEFAULT_ARTIFACT,
    INPUT_NAME,
    LABELS,
    METADATA_FILE,
    OUTPUT_NAME,
    SIGNATURE,
)


class KeywordModel:
    """The SavedModel's serving signature behind a numpy-in, numpy-out call.

    Loaded with `tf.saved_model.load`, not Keras: Keras 3 cannot reload a SavedModel. No
    `artifact_dir` means the model shipped inside this package, wherever it is installed (on a
    cluster, each worker finds its own copy). TensorFlow's file I/O also reads gs:// paths.
    """

    def __init__(self, artifact_dir: str | Path | None = None):
        import tensorflow as tf  # imported here so that importing this module stays cheap

        self.artifact_dir = str(artifact_dir or DEFAULT_ARTIFACT)
        with tf.io.gfile.GFile(f"{self.artifact_dir.rstrip('/')}/{METADATA_FILE}") as file:
            self.metadata = json.load(file)
        if tuple(self.metadata["labels"]) != LABELS:
            raise ValueError(f"{self.artifact_dir}: labels {self.metadata['labels']} != {LABELS}")
        self._tf = tf
        self._loaded = tf.saved_model.load(self.artifact_dir)
        self._signature = self._loaded.signatures[SIGNATURE]

    @property
    def version(self) -> str:
        return self.metadata["model_version"]

    def predict(self, waveforms: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, 4] for waveforms float32 [n, CLIP_SAMPLES]."""
        if waveforms.ndim != 2 or waveforms.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"expected [n, {CLIP_SAMPLES}] waveforms, got {waveforms.shape}")
        if len(waveforms) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        batch = self._tf.constant(waveforms, dtype=self._tf.float32)
        return self._signature(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy()


def pick_window(probabilities: np.ndarray) -> int:
    """Of a recording's windows [n, 4], the one whose keyword (yes or no) score is highest.

    A file is `yes` if some window is confidently `yes`; a file with no keyword window still
    reports its most keyword-like window, whose own top class is then `unknown` or `silence`.
    Used by the pipeline and by evaluation, so both label a long recording the same way.
    """
    keyword_columns = [LABELS.index("yes"), LABELS.index("no")]
    return int(np.argmax(probabilities[:, keyword_columns].max(axis=1)))
