"""Load the exported model and score batches of waveforms, with onnxruntime or TensorFlow.

An artifact holds the SavedModel (the source of truth, serving signature `serving_default`) and,
when `model.train`, `model.ensemble` or `model.onnx_export` wrote it, the same computation as
`model.onnx`, checked against the SavedModel to 1e-4. onnxruntime starts in a fraction of a second
without importing TensorFlow, and needs far less memory and time per window on a CPU.
"""

import json
import os
from collections.abc import Callable
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
from model.decision import Decision

ONNX_FILE = "model.onnx"
RUNTIMES = ("auto", "onnx", "tensorflow")  # auto: onnx when the artifact has model.onnx
# Threads per onnxruntime call. A caller that scores one batch at a time gains about 20% from 2
# on 2 cores; one that runs a batch per core in its own threads should ask for 1 (measured).
ONNX_THREADS = 2

Predict = Callable[[np.ndarray], np.ndarray]


class KeywordModel:
    """The exported model behind a numpy-in, numpy-out call.

    No `artifact_dir` means the model shipped inside this package, wherever it is installed (on
    a cluster, each worker finds its own copy). Paths with a scheme (gs://) are read through
    TensorFlow's file I/O. The SavedModel is loaded with `tf.saved_model.load`, not Keras: Keras 3
    cannot reload a SavedModel. `predict` may be called from several threads at once.
    """

    def __init__(
        self,
        artifact_dir: str | Path | None = None,
        runtime: str = "auto",
        onnx_threads: int = ONNX_THREADS,
    ):
        self.artifact_dir = artifact_location(artifact_dir)
        self.metadata = json.loads(read_artifact_file(f"{self.artifact_dir}/{METADATA_FILE}"))
        if tuple(self.metadata["labels"]) != LABELS:
            raise ValueError(f"{self.artifact_dir}: labels {self.metadata['labels']} != {LABELS}")
        self.runtime = resolve_runtime(self.artifact_dir, runtime)
        self._predict = (
            onnx_predictor(read_artifact_file(f"{self.artifact_dir}/{ONNX_FILE}"), onnx_threads)
            if self.runtime == "onnx"
            else saved_model_predictor(self.artifact_dir)
        )

    @property
    def version(self) -> str:
        return self.metadata["model_version"]

    @property
    def decision(self) -> Decision:
        """The artifact's keyword thresholds: how window probabilities become labels."""
        return Decision.from_metadata(self.metadata)

    def predict(self, waveforms: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, 4] for waveforms float32 [n, CLIP_SAMPLES]."""
        if waveforms.ndim != 2 or waveforms.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"expected [n, {CLIP_SAMPLES}] waveforms, got {waveforms.shape}")
        if len(waveforms) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        return self._predict(np.ascontiguousarray(waveforms, dtype=np.float32))


def resolve_runtime(artifact_dir: str | Path | None, runtime: str = "auto") -> str:
    """`onnx` or `tensorflow`: what `runtime` means for this artifact."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {RUNTIMES}")
    if runtime != "auto":
        return runtime
    onnx_path = f"{artifact_location(artifact_dir)}/{ONNX_FILE}"
    return "onnx" if artifact_file_exists(onnx_path) else "tensorflow"


def artifact_location(artifact_dir: str | Path | None) -> str:
    """The artifact directory as a path or URI without a trailing slash; None: the shipped one."""
    return str(artifact_dir or DEFAULT_ARTIFACT).rstrip("/")


def saved_model_predictor(artifact_dir: str) -> Predict:
    import tensorflow as tf  # imported here: the onnx runtime must not pay for it

    loaded = tf.saved_model.load(artifact_dir)  # referenced below: the signature needs it alive

    def predict(waveforms: np.ndarray) -> np.ndarray:
        outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(waveforms)})
        return outputs[OUTPUT_NAME].numpy()

    return predict


def onnx_predictor(model_bytes: bytes, threads: int = ONNX_THREADS) -> Predict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Below ORT_ENABLE_ALL the graph runs no faster than TensorFlow (measured).
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # A spinning thread pool burns CPU between batches that the decoding thread could use.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def predict(waveforms: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: waveforms})[0]

    return predict


def _is_local(path: str) -> bool:
    return "://" not in path


def read_artifact_file(path: str) -> bytes:
    if _is_local(path):
        return Path(path).read_bytes()
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as file:
        return file.read()


def artifact_file_exists(path: str) -> bool:
    if _is_local(path):
        return os.path.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)
