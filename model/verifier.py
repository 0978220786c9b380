"""The second stage: a pretrained speech embedding re-hears the windows the networks flag.

The two networks learned from the speakers of one data set; what limits their recall is how
well they tell `no` from `down`, `go` and `up` said by a voice they never heard. A speech
embedding pretrained on far more speech (Google's speech_embedding, Apache-2.0, as the ONNX
`melspectrogram.onnx` and `embedding_model.onnx` of openWakeWord 0.5.1, Apache-2.0) with a
small head trained on the train split separates them better, but costs about 5 times the
networks' time per window. So it hears only the keyword candidates: windows whose likelier
keyword has probability at least the artifact's candidate floor (metadata.json
`verifier.candidate_floor`; where it names none, CANDIDATE_FLOOR, the context rule's). Their
probabilities become the weighted geometric mean of the networks' and the head's,
renormalised; every other window keeps the networks' probabilities.

The artifact holds the stage in `verifier/`: the two ONNX files, the head's weights
(`head.npz`) and the ONNX files' licence; `metadata.json` `verifier` describes it and the
model version covers those files. Beside them, SLIDING_FILE, derived from the embedding model
and checked against it when opened. onnxruntime runs it for either runtime of the networks.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.context import CANDIDATE_FLOOR
from model.contract import CLIP_SAMPLES

VERIFIER_DIR = "verifier"
MEL_FILE = "melspectrogram.onnx"
EMBEDDING_FILE = "embedding_model.onnx"
HEAD_FILE = "head.npz"
# EMBEDDING_FILE made to embed a clip's windows in one pass (sliding_embedding_model), written
# beside it so that labelling need not import onnx (a second of start-up) to build it; a
# derived file like stream.onnx, checked when opened and outside the model version.
SLIDING_FILE = "embedding_sliding.onnx"
LICENSE_FILE = "LICENSE"
# Written beside the licence when the embedding model is fine-tuned (Apache-2.0 section 4b: a
# modified file carries a notice that it was changed).
NOTICE_FILE = "NOTICE"
FILES = (MEL_FILE, EMBEDDING_FILE, HEAD_FILE)
INT16_SCALE = 32767  # the mel model takes samples at 16-bit scale
EDGE_SAMPLES = 1_920  # 0.12 s of zeros on each side: 121 mel frames, 6 embedding windows
MEL_BINS = 32
EMBEDDING_FRAMES = 76  # mel frames per embedding (0.775 s)
EMBEDDING_STEP = 8  # mel frames between embeddings (80 ms)
EMBEDDING_VALUES = 96
# The head's dropout while it learns, alone or with the embedding model (model.training):
# of its standardised input, then after each hidden layer. Inactive when it serves.
HEAD_INPUT_DROPOUT = 0.1
HEAD_HIDDEN_DROPOUT = 0.3
HEAD_WEIGHT = 0.5  # of the head's log-probabilities in the geometric mean (chosen on val)
# The candidate floor a trained verifier stores unless told otherwise (chosen on val,
# model/EXPERIMENTS.md); an artifact that stores none re-hears from CANDIDATE_FLOOR.
REHEAR_FLOOR = 0.07
PROBABILITY_EPSILON = 1e-7


def candidates(probabilities: np.ndarray, floor: float = CANDIDATE_FLOOR) -> np.ndarray:
    """Windows [n, 4] whose likelier keyword has probability `floor` or more: at
    CANDIDATE_FLOOR, those the context rule scores; at the artifact's floor, those the
    verifier re-hears."""
    return probabilities[:, :2].max(axis=1) >= floor


def fuse(networks: np.ndarray, head: np.ndarray, head_weight: float = HEAD_WEIGHT) -> np.ndarray:
    """The weighted geometric mean of two probability rows [n, 4], renormalised."""
    logs = (1 - head_weight) * np.log(networks.astype(np.float64) + PROBABILITY_EPSILON)
    logs += head_weight * np.log(head.astype(np.float64) + PROBABILITY_EPSILON)
    fused = np.exp(logs - logs.max(axis=1, keepdims=True))
    return (fused / fused.sum(axis=1, keepdims=True)).astype(np.float32)


def session(model_bytes: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def sliding_embedding_model(model_bytes: bytes) -> bytes:
    """openWakeWord's `embedding_model.onnx` made to take any number of mel frames and return
    the embedding of every EMBEDDING_FRAMES-frame window EMBEDDING_STEP frames apart.

    Its convolutions are unpadded in time and it pools time by 2 three times, so one pass over
    a clip's 121 frames computes what six passes over windows 8 frames apart compute, bit for
    bit, with about a quarter of the work. Only its two reshapes change: the input's to any
    length, the output's to [clips, windows, 96] (a transpose of the channels-first result).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    first, last = graph.node[0], graph.node[-1]
    if first.op_type != "Reshape" or last.op_type != "Reshape":
        raise ValueError("not openWakeWord's embedding model: expected a reshape at each end")
    shapes = {first.input[1]: [0, 1, -1, MEL_BINS], last.input[1]: [0, EMBEDDING_VALUES, -1]}
    for initializer in graph.initializer:
        if initializer.name in shapes:
            values = np.array(shapes[initializer.name], np.int64)
            initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    output = last.output[0]
    last.output[0] = f"{output}_channels_first"
    graph.node.append(helper.make_node("Transpose", [last.output[0]], [output], perm=[0, 2, 1]))
    graph.input[0].type.tensor_type.shape.dim[1].dim_param = "frames"
    dims = graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for name in ("clips", "windows"):
        dims.add().dim_param = name
    dims.add().dim_value = EMBEDDING_VALUES
    onnx.checker.check_model(model)
    return model.SerializeToString()


def stored_sliding_session(sliding_bytes: bytes, embedding_bytes: bytes, threads: int = 1):
    """A session of a stored sliding model if it gives the embedding model's values, window by
    window, on a test run of mel frames (to 1e-5; they agree bit for bit); else None."""
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        Fail,
        InvalidArgument,
        InvalidGraph,
        InvalidProtobuf,
    )

    frames = np.random.default_rng(0).normal(1.0, 1.0, (1, 121, MEL_BINS, 1)).astype(np.float32)
    try:
        original, sliding = session(embedding_bytes, 1), session(sliding_bytes, threads)
        starts = range(0, frames.shape[1] - EMBEDDING_FRAMES + 1, EMBEDDING_STEP)
        windows = np.concatenate([frames[:, s : s + EMBEDDING_FRAMES] for s in starts])
        expected = original.run(None, {original.get_inputs()[0].name: windows})[0]
        slid = sliding.run(None, {sliding.get_inputs()[0].name: frames})[0]
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf):  # not such a model
        return None
    same = slid.size == expected.size and bool(
        np.max(np.abs(slid.reshape(-1) - expected.reshape(-1))) <= 1e-5
    )
    return sliding if same else None


class SpeechEmbedding:
    """openWakeWord's feature models: 1 s windows [n, CLIP_SAMPLES] in [-1, 1] to embeddings
    [n, 6, 96], computed as openWakeWord's AudioFeatures computes them (mel frames / 10 + 2,
    windows of EMBEDDING_FRAMES every EMBEDDING_STEP), the windows of a clip in one pass: the
    stored `sliding_bytes` if stored_sliding_session takes them, else sliding_embedding_model's."""

    def __init__(
        self,
        mel_bytes: bytes,
        embedding_bytes: bytes,
        threads: int = 1,
        sliding_bytes: bytes | None = None,
    ):
        stored = (
            None
            if sliding_bytes is None
            else stored_sliding_session(sliding_bytes, embedding_bytes, threads)
        )
        self._mel = session(mel_bytes, threads)
        self._embedding = stored or session(sliding_embedding_model(embedding_bytes), threads)
        self._mel_input = self._mel.get_inputs()[0].name
        self._embedding_input = self._embedding.get_inputs()[0].name

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        return self._embedding.run(None, {self._embedding_input: self.mel_frames(waveforms)})[0]

    def mel_frames(self, waveforms: np.ndarray) -> np.ndarray:
        """The embedding model's input [n, 121, MEL_BINS, 1] for waveforms [n, CLIP_SAMPLES]:
        what it hears, and what fine-tuning it (model.training.embedding_tuning) learns from."""
        if waveforms.ndim != 2 or waveforms.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"expected [n, {CLIP_SAMPLES}] waveforms, got {waveforms.shape}")
        scaled = np.clip(np.round(waveforms * INT16_SCALE), -INT16_SCALE - 1, INT16_SCALE)
        padded = np.pad(scaled, ((0, 0), (EDGE_SAMPLES, EDGE_SAMPLES))).astype(np.float32)
        # One clip per call: the mel model scales its output to the loudest frame of the whole
        # call, so a batch would make each clip's features depend on the others.
        mel = np.stack(
            [self._mel.run(None, {self._mel_input: clip[np.newaxis]})[0] for clip in padded]
        )
        return (mel.reshape(len(waveforms), -1, MEL_BINS, 1) / 10 + 2).astype(np.float32)


def head_features(embeddings: np.ndarray) -> np.ndarray:
    """[n, 192]: the mean and the maximum of each clip's embeddings [n, windows, 96]."""
    return np.concatenate([embeddings.mean(axis=1), embeddings.max(axis=1)], axis=1)


@dataclass(frozen=True)
class Head:
    """A standardised two-hidden-layer ReLU network over head_features, softmax over LABELS:
    `mean` and `scale` standardise its input; `layers` are (weights, bias) pairs."""

    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def from_npz(cls, stored) -> "Head":
        count = sum(1 for name in stored.files if name.startswith("weights_"))
        layers = tuple((stored[f"weights_{i}"], stored[f"bias_{i}"]) for i in range(count))
        return cls(stored["mean"], stored["scale"], layers)

    def as_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"mean": self.mean, "scale": self.scale}
        for index, (weights, bias) in enumerate(self.layers):
            arrays |= {f"weights_{index}": weights, f"bias_{index}": bias}
        return arrays

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        hidden = (features - self.mean) / self.scale
        for weights, bias in self.layers[:-1]:
            hidden = np.maximum(hidden @ weights + bias, 0.0)
        weights, bias = self.layers[-1]
        logits = hidden @ weights + bias
        exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exponentials / exponentials.sum(axis=1, keepdims=True)


class Verifier:
    """The second stage of an artifact: `rehear` re-scores the candidate windows."""

    def __init__(
        self,
        embedding: SpeechEmbedding,
        head: Head,
        head_weight: float = HEAD_WEIGHT,
        candidate_floor: float = CANDIDATE_FLOOR,
    ):
        self.embedding = embedding
        self.head = head
        self.head_weight = head_weight
        self.candidate_floor = candidate_floor

    @classmethod
    def load(
        cls,
        read,
        directory: str,
        described: dict,
        threads: int = 1,
        sliding: bool = False,
    ) -> "Verifier":
        """The verifier in `directory` of an artifact, its files read by `read(path) -> bytes`,
        as metadata.json's `verifier` describes it (its head weight, and its candidate floor
        where it has one); `sliding`: the directory holds SLIDING_FILE."""
        embedding = SpeechEmbedding(
            read(f"{directory}/{MEL_FILE}"),
            read(f"{directory}/{EMBEDDING_FILE}"),
            threads,
            read(f"{directory}/{SLIDING_FILE}") if sliding else None,
        )
        with np.load(io.BytesIO(read(f"{directory}/{HEAD_FILE}"))) as stored:
            head = Head.from_npz(stored)
        return cls(
            embedding,
            head,
            described["head_weight"],
            described.get("candidate_floor", CANDIDATE_FLOOR),
        )

    def head_probabilities(self, waveforms: np.ndarray) -> np.ndarray:
        return self.head.probabilities(head_features(self.embedding(waveforms)))

    def rehear(self, probabilities: np.ndarray, windows) -> np.ndarray:
        """`probabilities` [n, 4] of n windows, the candidates' fused with the head's; `windows`
        gives the waveforms [k, CLIP_SAMPLES] of the windows at given indices."""
        chosen = np.flatnonzero(candidates(probabilities, self.candidate_floor))
        if not len(chosen):
            return probabilities
        heard = self.head_probabilities(np.ascontiguousarray(windows(chosen), dtype=np.float32))
        rescored = probabilities.copy()
        rescored[chosen] = fuse(probabilities[chosen], heard, self.head_weight)
        return rescored


def verifier_files(artifact_dir: Path) -> list[Path]:
    """The files of an artifact's verifier that the model version covers (none without one)."""
    directory = artifact_dir / VERIFIER_DIR
    return [directory / name for name in FILES if (directory / name).is_file()]
