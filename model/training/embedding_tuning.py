"""Fine-tune the verifier's speech embedding together with its head on the train split.

openWakeWord's `embedding_model.onnx` (model.verifier) is a plain stack of convolutions (batch
norm folded in), each followed by a leaky ReLU with slope LEAK clipped below at FLOOR, with
max pooling between them. `embedding_network` rebuilds it in Keras from the ONNX file's own
weights, as the sliding form (a clip's 121 mel frames in, its six embeddings out); the head's
features (mean and maximum of the six), its standardisation and its layers follow, so the whole
second stage trains as one network from mel frames to the four probabilities. `tuned_embedding`
writes the trained convolution weights back into the ONNX file's initializers: the graph, and
with it the sliding model and the serving code, stay exactly as they were.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.training import checkpoint
from model.verifier import (
    EMBEDDING_VALUES,
    HEAD_HIDDEN_DROPOUT,
    HEAD_INPUT_DROPOUT,
    MEL_BINS,
    Head,
)

LEAK = 0.2
FLOOR = -0.4
LEARNING_RATE = 1e-4  # Adam's, constant: the epoch of lowest val loss is kept
BATCH = 64


@dataclass
class TuningState:
    """What the epoch loop carries to the next epoch (model.training.checkpoint captures and
    saves it)."""

    epochs_done: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    generator: dict
    history: list[dict]
    best_epoch: int
    best_weights: list[np.ndarray]
    wall_seconds: float


@dataclass(frozen=True)
class ConvolutionWeights:
    """Where a Keras convolution's weights live in the ONNX file: its initializers' names."""

    layer: object
    weights_name: str
    bias_name: str | None


def embedding_network(embedding_bytes: bytes):
    """The Keras form of the ONNX embedding model, sliding: mel frames [n, frames, MEL_BINS, 1]
    to embeddings [n, windows, EMBEDDING_VALUES]; and its convolutions' ConvolutionWeights."""
    import keras
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load_from_string(embedding_bytes).graph
    stored = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    frames = keras.Input((None, MEL_BINS, 1))
    hidden, convolutions = frames, []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MaxPool":
            hidden = keras.layers.MaxPooling2D(attributes["kernel_shape"])(hidden)
        elif node.op_type == "Conv":
            weights = stored[node.input[1]]
            bias_name = node.input[2] if len(node.input) > 2 else None
            top, left, bottom, right = attributes.get("pads", (0, 0, 0, 0))
            if top or left or bottom or right:
                hidden = keras.layers.ZeroPadding2D(((top, bottom), (left, right)))(hidden)
            layer = keras.layers.Conv2D(
                weights.shape[0], weights.shape[2:], use_bias=bias_name is not None
            )
            hidden = layer(hidden)
            # ONNX [out, in, height, width] to Keras [height, width, in, out]
            layer.set_weights(
                [weights.transpose(2, 3, 1, 0)] + ([stored[bias_name]] if bias_name else [])
            )
            convolutions.append(ConvolutionWeights(layer, node.input[1], bias_name))
            if bias_name:  # every convolution but the last
                hidden = keras.layers.LeakyReLU(LEAK)(hidden)
                hidden = keras.layers.Lambda(lambda t: keras.ops.maximum(t, FLOOR))(hidden)
    embeddings = keras.layers.Reshape((-1, EMBEDDING_VALUES))(hidden)
    return keras.Model(frames, embeddings), convolutions


def verifier_network(embedding_bytes: bytes, head: Head):
    """The second stage as one Keras network, mel frames to probabilities, starting from the
    ONNX embedding and `head`; and the convolutions' and the head's Dense layers."""
    import keras

    embedding, convolutions = embedding_network(embedding_bytes)
    frames = keras.Input((None, MEL_BINS, 1))
    embedded = embedding(frames)
    features = keras.layers.Concatenate()(
        [keras.ops.mean(embedded, axis=1), keras.ops.max(embedded, axis=1)]
    )
    mean, scale = head.mean.astype(np.float32), head.scale.astype(np.float32)
    hidden = keras.layers.Lambda(lambda t: (t - mean) / scale)(features)
    hidden = keras.layers.Dropout(HEAD_INPUT_DROPOUT)(hidden)
    dense = []
    for index, (weights, bias) in enumerate(head.layers):
        last = index == len(head.layers) - 1
        layer = keras.layers.Dense(weights.shape[1], activation="softmax" if last else "relu")
        hidden = layer(hidden)
        layer.set_weights([weights, bias])
        dense.append(layer)
        if not last:
            hidden = keras.layers.Dropout(HEAD_HIDDEN_DROPOUT)(hidden)
    return keras.Model(frames, hidden), convolutions, dense


def tuned_embedding(embedding_bytes: bytes, convolutions: list[ConvolutionWeights]) -> bytes:
    """The ONNX embedding model with the Keras convolutions' current weights."""
    import onnx
    from onnx import numpy_helper

    values = {}
    for convolution in convolutions:
        weights = convolution.layer.get_weights()
        values[convolution.weights_name] = weights[0].transpose(3, 2, 0, 1)
        if convolution.bias_name:
            values[convolution.bias_name] = weights[1]
    model = onnx.load_from_string(embedding_bytes)
    for initializer in model.graph.initializer:
        if initializer.name in values:
            array = np.ascontiguousarray(values[initializer.name], dtype=np.float32)
            initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def train_epoch(network, frames: np.ndarray, labels: np.ndarray, generator) -> float:
    """One pass over the examples in an order drawn from `generator`, BATCH at a time (the
    last part batch left out); the mean training loss."""
    order = generator.permutation(len(frames))
    starts = range(0, len(order) - BATCH + 1, BATCH)
    batches = (np.sort(order[start : start + BATCH]) for start in starts)
    return float(np.mean([network.train_on_batch(frames[b], labels[b]) for b in batches]))


def tune(
    embedding_bytes: bytes,
    head: Head,
    frames: np.ndarray,
    labels: np.ndarray,
    val_frames: np.ndarray,
    val_labels: np.ndarray,
    epochs: int,
    seed: int,
    checkpoint_dir: Path,
) -> tuple[bytes, Head, dict]:
    """The embedding and head trained together on mel `frames` (SpeechEmbedding.mel_frames)
    for `epochs`, kept at the epoch of lowest val loss; and how it went. Resumes from the
    checkpoint in `checkpoint_dir`, written after every epoch and removed at the end."""
    import keras

    keras.utils.set_random_seed(seed)
    network, convolutions, dense = verifier_network(embedding_bytes, head)
    network.compile(keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy")
    generator = np.random.default_rng(seed)
    settings = {"examples": len(frames), "epochs": epochs, "seed": seed}
    state = checkpoint.load(checkpoint_dir, settings)
    if state is None:
        start_loss = float(network.evaluate(val_frames, val_labels, BATCH * 4, verbose=0))
        history = [{"epoch": 0, "val_loss": start_loss}]
        state = TuningState(0, [], [], {}, history, 0, network.get_weights(), 0.0)
    else:
        checkpoint.restore(state, network, generator)
    while state.epochs_done < epochs:
        started = time.monotonic()
        loss = train_epoch(network, frames, labels, generator)
        val_loss = float(network.evaluate(val_frames, val_labels, BATCH * 4, verbose=0))
        epoch = state.epochs_done + 1
        best = val_loss < min(entry["val_loss"] for entry in state.history)
        state = checkpoint.capture(
            network,
            generator,
            TuningState,
            epochs_done=epoch,
            history=[*state.history, {"epoch": epoch, "loss": loss, "val_loss": val_loss}],
            best_epoch=epoch if best else state.best_epoch,
            best_weights=network.get_weights() if best else state.best_weights,
            wall_seconds=state.wall_seconds + time.monotonic() - started,
        )
        checkpoint.save(checkpoint_dir, settings, state)
        print(f"embedding tuning: {state.history[-1]}", flush=True)
    network.set_weights(state.best_weights)
    tuned_head = Head(head.mean, head.scale, tuple(tuple(layer.get_weights()) for layer in dense))
    fitting = {
        "epochs_run": epochs,
        "kept_epoch": state.best_epoch,
        "val_loss": [round(entry["val_loss"], 5) for entry in state.history],
        "learning_rate": LEARNING_RATE,
        "wall_seconds": round(state.wall_seconds, 1),
    }
    checkpoint.remove(checkpoint_dir)
    return tuned_embedding(embedding_bytes, convolutions), tuned_head, fitting
