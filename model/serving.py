"""Load the exported model and score batches of waveforms, with onnxruntime or TensorFlow.

An artifact holds the SavedModel (the source of truth, serving signature `serving_default`) and,
when `model.training.train`, `model.training.ensemble` or `model.export.onnx_export` wrote it, the
same computation as `model.onnx`, checked against the SavedModel to 1e-4. onnxruntime starts in a
fraction of a second without importing TensorFlow, and needs far less memory and time per window on
a CPU. An artifact with a `verifier/` (model.verifier) has its keyword candidates heard again, by
onnxruntime whichever runtime scores the networks.
"""

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.audio import WINDOW_HOP, WindowRun
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
from model.verifier import SLIDING_FILE, VERIFIER_DIR, Verifier

ONNX_FILE = "model.onnx"
STREAM_FILE = "stream.onnx"  # model.export.onnx_stream: model.onnx for runs of overlapping windows
STREAM_INPUT = "samples"
# Largest allowed |probability difference| of a reloaded SavedModel from the Keras model and of
# model.onnx from the SavedModel (checked at export), and of the stream model from model.onnx
# (checked when it is opened).
TOLERANCE = 1e-4
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
        self.metadata = read_metadata(self.artifact_dir)
        if tuple(self.metadata["labels"]) != LABELS:
            raise ValueError(f"{self.artifact_dir}: labels {self.metadata['labels']} != {LABELS}")
        self.runtime = resolve_runtime(self.artifact_dir, runtime)
        self._onnx_threads = onnx_threads
        self._predict = (
            onnx_predictor(read_artifact_file(f"{self.artifact_dir}/{ONNX_FILE}"), onnx_threads)
            if self.runtime == "onnx"
            else saved_model_predictor(self.artifact_dir)
        )
        # The stream model (model.export.onnx_stream), opened and checked on first use: short files
        # never need it.
        stream_path = f"{self.artifact_dir}/{STREAM_FILE}"
        self._stream_path = (
            stream_path if self.runtime == "onnx" and artifact_file_exists(stream_path) else None
        )
        self._predict_run: Predict | None = None
        self._run_lock = threading.Lock()
        # The second stage (model.verifier), when the artifact has one.
        stage = self.metadata.get("verifier")
        verifier_dir = f"{self.artifact_dir}/{VERIFIER_DIR}"
        self._verifier = (
            Verifier.load(
                read_artifact_file,
                verifier_dir,
                stage,
                onnx_threads,
                sliding=artifact_file_exists(f"{verifier_dir}/{SLIDING_FILE}"),
            )
            if stage
            else None
        )

    @property
    def version(self) -> str:
        return self.metadata["model_version"]

    @property
    def decision(self) -> Decision:
        """The artifact's keyword decision (context rule and thresholds): how window
        probabilities become labels."""
        return Decision.from_metadata(self.metadata)

    def predict(self, waveforms: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, 4] for waveforms float32 [n, CLIP_SAMPLES]: the networks',
        and for the keyword candidates, fused with the verifier's where the artifact has one."""
        if waveforms.ndim != 2 or waveforms.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"expected [n, {CLIP_SAMPLES}] waveforms, got {waveforms.shape}")
        if len(waveforms) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
        probabilities = self._predict(waveforms)
        if self._verifier is None:
            return probabilities
        return self._verifier.rehear(probabilities, lambda chosen: waveforms[chosen])

    def predict_run(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, 4] of the n windows every WINDOW_HOP in samples float32
        [CLIP_SAMPLES + WINDOW_HOP * (n - 1)] (a model.audio.WindowRun): what `predict` gives
        for those windows, computed from the run with each STFT frame once
        (model.export.onnx_stream) when the artifact's model.onnx allows it."""
        run = WindowRun(np.asarray(samples, dtype=np.float32))
        if len(run.samples) != CLIP_SAMPLES + WINDOW_HOP * (run.count - 1) or run.count < 1:
            raise ValueError(f"{len(run.samples)} samples are not a run of windows")
        predict_run = self._run_predictor()
        if predict_run is None:
            return self.predict(run.windows())
        probabilities = predict_run(np.ascontiguousarray(run.samples)[np.newaxis])
        if self._verifier is None:
            return probabilities
        return self._verifier.rehear(probabilities, lambda chosen: run.windows()[chosen])

    def _run_predictor(self) -> Predict | None:
        """The artifact's stream model, once checked against model.onnx on a test run; None
        for the TensorFlow runtime, an artifact without one, or one that fails the check."""
        with self._run_lock:
            if self._stream_path is not None:
                stream_bytes = read_artifact_file(self._stream_path)
                self._stream_path = None  # opened (or refused) once
                self._predict_run = stream_predictor(
                    stream_bytes, self._predict, self._onnx_threads
                )
            return self._predict_run


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


def onnx_predictor(
    model_bytes: bytes, threads: int = ONNX_THREADS, input_name: str = INPUT_NAME
) -> Predict:
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
        return session.run([OUTPUT_NAME], {input_name: waveforms})[0]

    return predict


def stream_predictor(stream_bytes: bytes, predict: Predict, threads: int) -> Predict | None:
    """A predictor of a stream model (model.export.onnx_stream), if it gives what `predict`
    (model.onnx) gives on a test run of loud, quiet and silent windows, to TOLERANCE; else None."""
    session_predict = onnx_predictor(stream_bytes, threads, STREAM_INPUT)
    rng = np.random.default_rng(0)
    levels = np.repeat([0.3, 0.01, 0.0, 1e-4, 0.05], WINDOW_HOP)  # one level per half window
    samples = (rng.standard_normal(len(levels)) * levels).astype(np.float32)
    expected = predict(np.ascontiguousarray(WindowRun(samples).windows()))
    if np.max(np.abs(session_predict(samples[np.newaxis]) - expected)) > TOLERANCE:
        return None
    return session_predict


def _is_local(path: str) -> bool:
    return "://" not in path


def read_metadata(artifact_dir: str | Path | None) -> dict:
    """An artifact's metadata.json (None: the shipped model's), read without loading TensorFlow
    for a local artifact: the one way the labeller and the model read it."""
    return json.loads(read_artifact_file(f"{artifact_location(artifact_dir)}/{METADATA_FILE}"))


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
