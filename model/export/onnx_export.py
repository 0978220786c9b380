"""Export the trained Keras model to ONNX, for serving with onnxruntime instead of TensorFlow.

The ONNX graph computes what the SavedModel's `serving_default` signature computes: `waveform`
float32 [batch, 16000] in, `probabilities` = softmax(logits / temperature) float32 [batch, 4] out,
log-mel front end included, dynamic batch. It is written directly with the `onnx` helper API from
the Keras model's layers and weights (no tf2onnx), in NCHW layout:

- Front end (model/training/features.py): the 512-point real DFT of each Hann-windowed 480-sample
  frame is factorised Cooley-Tukey style as 512 = 16 x 32. Stage 1 is one grouped Conv1D over the
  waveform viewed as [batch, 32, 500] (window, 16-point DFT and twiddle factors folded into its
  weights, stride 10 = hop 320 / 32), stage 2 one MatMul with the 32-point DFT matrix; then
  magnitude, the mel matrix of features.py and log(x + 1e-6). About 2.5 M multiply-adds per window
  instead of 12 M for a direct DFT-basis matmul (what tf2onnx emits for tf.signal.stft), and no
  DFT/STFT op (onnxruntime's are slower than TensorFlow's FFT).
- Network: Conv2D / DepthwiseConv2D with the following BatchNormalization folded into the
  convolution, ReLU / swish, Add, mean over an axis, (Global)pooling, Resizing (bilinear),
  Flatten, Dense; Dropout, SpatialDropout2D and SpecAugment are inference-time identities. This
  covers the `ds-cnn`, `bc-resnet` and `tutorial-cnn` architectures; anything else raises
  NotImplementedError rather than exporting a wrong graph.
- The temperature is folded into the last Dense layer's weights, then Softmax.
- An ensemble (build_members_onnx) holds each member's graph under its own name prefix and
  averages their probabilities with one Mean node; what the members compute alike (the FFT front
  end, a loudness gain being applied after the mel projection) is computed once.

`onnx` builds the file (training, export); `onnxruntime` serves it (model/serving.py), with no
TensorFlow import. `model.training.train` and `model.training.ensemble` write it next to the
SavedModel and check it against the SavedModel on val; `python -m model.export.onnx_export ARTIFACT`
adds it to a one-network artifact trained before.

Command: `python -m model.export.onnx_export model/artifacts/yesno-members/ds-cnn-m [--arch
ds-cnn-m]`
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.contract import CLIP_SAMPLES, INPUT_NAME, LABELS, METADATA_FILE, OUTPUT_NAME, SIGNATURE
from model.export.onnx_graph import OPSET, GraphBuilder, gain_of_power, log_mel
from model.serving import ONNX_FILE, TOLERANCE, onnx_predictor, saved_model_predictor

if TYPE_CHECKING:
    import keras
    import onnx

    from model.export.artifact import Member


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (the odd pixel at the end) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _conv_pads(layer: Any, input_shape: tuple, kernel: tuple, strides: tuple, dilation: tuple):
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    if layer.padding != "same":
        raise NotImplementedError(f"{layer.name}: padding {layer.padding!r}")
    (top, bottom), (left, right) = (
        _same_pads(input_shape[axis + 1], kernel[axis], strides[axis], dilation[axis])
        for axis in (0, 1)
    )
    return [top, left, bottom, right]


def _batch_norm_affine(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Inference-time BatchNormalization as x * scale + shift."""
    variance = np.asarray(layer.moving_variance, np.float64)
    scale = 1.0 / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * np.asarray(layer.gamma, np.float64)
    shift = -np.asarray(layer.moving_mean, np.float64) * scale
    if layer.center:
        shift = shift + np.asarray(layer.beta, np.float64)
    return scale, shift


def _nchw_axis(axis: int, rank: int) -> int:
    """A Keras channels-last axis of a rank-4 tensor -> the same axis in NCHW."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def _activation(b: GraphBuilder, x: str, activation: Any, where: str) -> str:
    name = getattr(activation, "__name__", str(activation))
    if name == "linear":
        return x
    if name == "relu":
        return b.op("Relu", [x], "relu")
    if name in ("swish", "silu"):
        return b.op("Mul", [x, b.op("Sigmoid", [x], "sigmoid")], "swish")
    if name == "sigmoid":
        return b.op("Sigmoid", [x], "sigmoid")
    raise NotImplementedError(f"{where}: activation {name!r}")


def _loudness_gain(b: GraphBuilder, waveform: str) -> str:
    """The gain [batch, 1] that model.training.features.LoudnessNormalisation applies to
    waveform."""
    from model.training.feature_settings import TARGET_RMS

    power = b.op("Mul", [waveform, waveform], "square")
    mean_power = b.op("ReduceMean", [power, b.ints("axes", 1)], "mean_power", keepdims=1)
    return gain_of_power(b, mean_power, TARGET_RMS)


def _keras_graph(model: keras.Model) -> list[tuple[Any, list, list]]:
    """(operation, input tensors, output tensors) of the functional model, inputs first."""
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            steps.append((node.operation, list(node.input_tensors), list(node.output_tensors)))
    return steps


def build_onnx(keras_model: keras.Model, temperature: float) -> onnx.ModelProto:
    """The ONNX model (waveform -> probabilities) of keras_model (waveform -> logits)."""
    import keras
    from onnx import TensorProto, checker, helper

    from model.training.features import LogMelSpectrogram, LoudnessNormalisation

    layers = keras.layers
    b = GraphBuilder()
    names: dict[int, str] = {}  # id(KerasTensor) -> ONNX tensor name
    steps = _keras_graph(keras_model)
    consumers: dict[int, list] = {}
    for operation, inputs, _ in steps:
        for tensor in inputs:
            consumers.setdefault(id(tensor), []).append(operation)
    output_tensor = keras_model.outputs[0]
    folded: set[int] = set()  # BatchNormalization layers already folded into a convolution
    gains: dict[int, str] = {}  # loudness-normalised tensors whose gain the log-mel applies

    for operation, inputs, outputs in steps:
        out = outputs[0]
        where = f"{operation.name} ({type(operation).__name__})"
        if isinstance(operation, layers.InputLayer):
            names[id(out)] = INPUT_NAME
            continue
        x = names[id(inputs[0])]
        rank = len(inputs[0].shape)
        if id(operation) in folded:
            names[id(out)] = x
        elif isinstance(operation, LogMelSpectrogram):
            mel_matrix = np.asarray(operation.mel_matrix, np.float64)
            names[id(out)] = log_mel(b, x, mel_matrix, gains.get(id(inputs[0])))
        elif isinstance(operation, LoudnessNormalisation):
            gain = _loudness_gain(b, x)
            if all(isinstance(c, LogMelSpectrogram) for c in consumers.get(id(out), [])):
                # Applied to the mel spectrum instead: the front end then reads the raw
                # waveform, like every other network's, and an ensemble computes it once.
                names[id(out)], gains[id(out)] = x, gain
            else:
                names[id(out)] = b.op("Mul", [x, gain], "normalised")
        elif isinstance(operation, (layers.Dropout, layers.SpatialDropout2D)) or (
            type(operation).__name__ == "SpecAugment"  # identity unless training
        ):
            names[id(out)] = x
        elif isinstance(operation, (layers.Conv2D, layers.DepthwiseConv2D)):
            if operation.data_format != "channels_last" or rank != 4:
                raise NotImplementedError(f"{where}: only channels_last 2-D convolutions")
            kernel = np.asarray(operation.kernel, np.float64)
            height, width, channels_in, last = kernel.shape
            if isinstance(operation, layers.DepthwiseConv2D):
                weights = kernel.transpose(2, 3, 0, 1).reshape(channels_in * last, 1, height, width)
                group = channels_in
            else:
                weights = kernel.transpose(3, 2, 0, 1)
                group = getattr(operation, "groups", 1)
            bias = (
                np.asarray(operation.bias, np.float64)
                if operation.use_bias
                else np.zeros(weights.shape[0])
            )
            following = consumers.get(id(out), [])
            if (
                len(following) == 1
                and isinstance(following[0], layers.BatchNormalization)
                and [a % 4 for a in np.atleast_1d(following[0].axis)] == [3]
                and getattr(operation.activation, "__name__", "") == "linear"
            ):
                scale, shift = _batch_norm_affine(following[0])
                weights = weights * scale[:, None, None, None]
                bias = bias * scale + shift
                folded.add(id(following[0]))
            strides = tuple(operation.strides)
            dilation = tuple(operation.dilation_rate)
            y = b.op(
                "Conv",
                [x, b.const(f"{operation.name}_w", weights), b.const(f"{operation.name}_b", bias)],
                operation.name,
                kernel_shape=[height, width],
                strides=list(strides),
                dilations=list(dilation),
                pads=_conv_pads(operation, inputs[0].shape, (height, width), strides, dilation),
                group=group,
            )
            names[id(out)] = _activation(b, y, operation.activation, where)
        elif isinstance(operation, layers.BatchNormalization):
            axes = [_nchw_axis(a, rank) for a in np.atleast_1d(operation.axis)]
            if len(axes) != 1:
                raise NotImplementedError(f"{where}: multi-axis batch norm")
            scale, shift = _batch_norm_affine(operation)
            shape = [1] * rank
            shape[axes[0]] = len(scale)
            y = b.op("Mul", [x, b.const("bn_scale", scale.reshape(shape[1:]))], operation.name)
            names[id(out)] = b.op("Add", [y, b.const("bn_shift", shift.reshape(shape[1:]))], "bn")
        elif isinstance(operation, layers.ReLU):
            if operation.max_value is not None or operation.negative_slope or operation.threshold:
                raise NotImplementedError(f"{where}: only plain ReLU")
            names[id(out)] = b.op("Relu", [x], operation.name)
        elif isinstance(operation, layers.Activation):
            names[id(out)] = _activation(b, x, operation.activation, where)
        elif isinstance(operation, layers.GlobalAveragePooling2D):
            if operation.data_format != "channels_last":
                raise NotImplementedError(f"{where}: only channels_last")
            y = b.op("GlobalAveragePool", [x], operation.name)
            if not operation.keepdims:
                y = b.op("Flatten", [y], "pooled", axis=1)
            names[id(out)] = y
        elif isinstance(operation, (layers.MaxPooling2D, layers.AveragePooling2D)):
            pool, strides = tuple(operation.pool_size), tuple(operation.strides)
            op_type = "MaxPool" if isinstance(operation, layers.MaxPooling2D) else "AveragePool"
            attrs = {} if op_type == "MaxPool" else {"count_include_pad": 0}
            names[id(out)] = b.op(
                op_type,
                [x],
                operation.name,
                kernel_shape=list(pool),
                strides=list(strides),
                pads=_conv_pads(operation, inputs[0].shape, pool, strides, (1, 1)),
                **attrs,
            )
        elif isinstance(operation, layers.Resizing):
            if (
                operation.interpolation != "bilinear"
                or operation.crop_to_aspect_ratio
                or operation.pad_to_aspect_ratio
                or operation.antialias
            ):
                raise NotImplementedError(f"{where}: only plain bilinear resizing")
            batch_channels = b.op(
                "Slice",
                [b.op("Shape", [x], "shape"), b.ints("start", 0), b.ints("end", 2)],
                "batch_channels",
            )
            sizes = b.op(
                "Concat",
                [batch_channels, b.ints("size", operation.height, operation.width)],
                "sizes",
                axis=0,
            )
            names[id(out)] = b.op(
                "Resize",
                [x, "", "", sizes],
                operation.name,
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        elif isinstance(operation, layers.Flatten):
            if rank == 4:  # Keras flattens channels-last: (h, w, c) order
                x = b.op("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
            names[id(out)] = b.op("Flatten", [x], operation.name, axis=1)
        elif isinstance(operation, layers.Dense):
            if rank != 2:
                raise NotImplementedError(f"{where}: Dense on rank {rank}")
            kernel = np.asarray(operation.kernel, np.float64)
            bias = (
                np.asarray(operation.bias, np.float64)
                if operation.use_bias
                else np.zeros(kernel.shape[1])
            )
            linear = getattr(operation.activation, "__name__", "") == "linear"
            if out is output_tensor and linear:  # fold the temperature into the logits layer
                kernel, bias = kernel / temperature, bias / temperature
            y = b.op(
                "Gemm",
                [x, b.const(f"{operation.name}_w", kernel), b.const(f"{operation.name}_b", bias)],
                operation.name,
            )
            y = _activation(b, y, operation.activation, where)
            if out is output_tensor and not linear:
                y = b.op("Div", [y, b.const("temperature", temperature)], "scaled")
            names[id(out)] = y
        elif type(operation).__name__ == "Add" and len(inputs) >= 2:  # keras.ops.add / layers.Add
            y = x
            for other in inputs[1:]:
                y = b.op("Add", [y, names[id(other)]], operation.name)
            names[id(out)] = y
        elif type(operation).__name__ == "Mean" and type(operation).__module__.startswith(
            "keras.src.ops"
        ):  # keras.ops.mean
            axes = [_nchw_axis(a, rank) for a in np.atleast_1d(operation.axis)]
            names[id(out)] = b.op(
                "ReduceMean",
                [x, b.ints("axes", *axes)],
                operation.name,
                keepdims=int(operation.keepdims),
            )
        else:
            raise NotImplementedError(f"no ONNX conversion for {where}")

    logits = names[id(output_tensor)]
    b.nodes.append(helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=-1, name="softmax"))
    graph = helper.make_graph(
        b.nodes,
        keras_model.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", CLIP_SAMPLES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(LABELS)])],
        b.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="yesno-label model/export/onnx_export.py",
        doc_string=f"{keras_model.name}: {INPUT_NAME} float32 [batch, {CLIP_SAMPLES}] -> "
        f"{OUTPUT_NAME} float32 [batch, {len(LABELS)}] = softmax(logits / temperature)",
    )
    helper.set_model_props(
        model, {"labels": json.dumps(list(LABELS)), "temperature": repr(float(temperature))}
    )
    checker.check_model(model, full_check=True)
    return model


def _merge_duplicates(nodes: list, initializers: list) -> tuple[list, list]:
    """The same graph with equal initializers stored once and equal nodes (same operator, inputs
    and attributes) computed once, in order: the members of an ensemble share their front end."""
    from onnx import numpy_helper

    renamed: dict[str, str] = {}
    kept_initializers, initializer_by_value = [], {}
    for initializer in initializers:
        value = numpy_helper.to_array(initializer)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in initializer_by_value:
            renamed[initializer.name] = initializer_by_value[key]
        else:
            initializer_by_value[key] = initializer.name
            kept_initializers.append(initializer)
    kept_nodes, node_by_key = [], {}
    for node in nodes:
        inputs = [renamed.get(name, name) for name in node.input]
        key = (node.domain, node.op_type, tuple(inputs))
        key += tuple(attribute.SerializeToString() for attribute in node.attribute)
        if key in node_by_key:
            renamed.update(zip(node.output, node_by_key[key].output, strict=True))
            continue
        del node.input[:]
        node.input.extend(inputs)
        node_by_key[key] = node
        kept_nodes.append(node)
    return kept_nodes, kept_initializers


def build_members_onnx(members: list[Member]) -> onnx.ModelProto:
    """The ONNX model of one member, or of an ensemble: the mean of the members' probabilities.

    Each member's graph is built by build_onnx and its names prefixed (`m0/`, `m1/`, ...); an
    Identity feeds it the shared waveform input, and a Mean node averages their outputs, as
    model.export.artifact.calibrated_probabilities does in the SavedModel. What the members
    compute alike (the log-mel front end up to the mel spectrum) is computed once.
    """
    from onnx import checker, compose, helper

    protos = [build_onnx(keras_model, temperature) for keras_model, temperature in members]
    if len(protos) == 1:
        return protos[0]
    nodes, initializers, outputs = [], [], []
    for index, proto in enumerate(protos):
        graph = compose.add_prefix(proto, f"m{index}/").graph
        nodes += [helper.make_node("Identity", [INPUT_NAME], [graph.input[0].name]), *graph.node]
        initializers += graph.initializer
        outputs.append(graph.output[0].name)
    nodes.append(helper.make_node("Mean", outputs, [OUTPUT_NAME], name="ensemble_mean"))
    nodes, initializers = _merge_duplicates(nodes, initializers)
    first = protos[0].graph  # the input and output declarations, unprefixed
    name = "+".join(proto.graph.name for proto in protos)
    graph = helper.make_graph(nodes, name, first.input, first.output, initializers)
    model = helper.make_model(
        graph,
        opset_imports=protos[0].opset_import,
        ir_version=protos[0].ir_version,
        producer_name=protos[0].producer_name,
        doc_string=f"mean of the probabilities of {len(protos)} models: "
        + "; ".join(proto.doc_string for proto in protos),
    )
    temperatures = [float(temperature) for _, temperature in members]
    helper.set_model_props(
        model, {"labels": json.dumps(list(LABELS)), "temperatures": json.dumps(temperatures)}
    )
    checker.check_model(model, full_check=True)
    return model


def export_onnx(members: list[Member], path: str | Path) -> None:
    """Write the members (each a Keras model waveform -> logits and its temperature) as ONNX to
    path: softmax(logits / temperature), averaged over the members.

    Inference mode (dropout and SpecAugment off, batch norm on its moving statistics), dynamic
    batch, float32 weights. Raises NotImplementedError for a layer it cannot convert.
    """
    Path(path).write_bytes(build_members_onnx(members).SerializeToString())


def check_onnx(artifact_dir: str | Path, waveforms: np.ndarray, batch_size: int = 128) -> dict:
    """Compare the artifact's model.onnx with its SavedModel on waveforms [n, 16000].

    Returns the largest absolute probability difference and the argmax agreement; raises
    RuntimeError if the difference exceeds TOLERANCE or an output is not finite.
    """
    onnx_predict = onnx_predictor((Path(artifact_dir) / ONNX_FILE).read_bytes())
    saved_model_predict = saved_model_predictor(str(artifact_dir))
    expected, actual = [], []
    for start in range(0, len(waveforms), batch_size):
        batch = np.ascontiguousarray(waveforms[start : start + batch_size], np.float32)
        expected.append(saved_model_predict(batch))
        actual.append(onnx_predict(batch))
    reference, output = np.concatenate(expected), np.concatenate(actual)
    if not np.all(np.isfinite(output)):
        raise RuntimeError(f"{artifact_dir}/{ONNX_FILE}: non-finite probabilities")
    difference = float(np.max(np.abs(output - reference)))
    agreement = float(np.mean(output.argmax(axis=1) == reference.argmax(axis=1)))
    if difference > TOLERANCE:
        raise RuntimeError(
            f"{artifact_dir}/{ONNX_FILE} differs from the SavedModel by {difference}"
        )
    return {
        "max_abs_difference": difference,
        "argmax_agreement": agreement,
        "checked_windows": len(waveforms),
    }


def rebuild_keras_model(saved_model_dir: str | Path, architecture: str) -> keras.Model:
    """A Keras model with the weights of an exported SavedModel, for artifacts trained earlier.

    Keras 3 cannot reload the SavedModel, so the architecture is rebuilt with
    `model.training.architecture.build_model` and every variable of the serving signature is
    assigned by name (`conv/kernel:0` -> `conv/kernel`); the names and shapes must match exactly.
    """
    import tensorflow as tf

    from model.training.architecture import build_model

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep alive: the signature holds weak refs
    saved = loaded.signatures[SIGNATURE].variables
    values = {variable.name.removesuffix(":0"): variable.numpy() for variable in saved}
    model = build_model(architecture)
    weights = {weight.path: weight for weight in model.weights}
    if set(values) != set(weights):
        raise ValueError(
            f"variables differ: only saved {sorted(set(values) - set(weights))}, "
            f"only rebuilt {sorted(set(weights) - set(values))}"
        )
    for name, weight in weights.items():
        if tuple(weight.shape) != values[name].shape:
            raise ValueError(f"{name}: saved {values[name].shape} != rebuilt {weight.shape}")
        weight.assign(values[name])
    return model


def write_onnx(artifact_dir: Path, members: list[Member], waveforms: np.ndarray) -> dict:
    """Export model.onnx (and its stream model, model.export.onnx_stream) into artifact_dir, check
    it against the SavedModel there on waveforms, and return what to record under "onnx" in
    metadata.json."""
    from model.export.onnx_stream import write_stream_onnx

    export_onnx(members, artifact_dir / ONNX_FILE)
    write_stream_onnx(artifact_dir)
    return {
        "file": ONNX_FILE,
        "opset": OPSET,
        "checked_against_saved_model": check_onnx(artifact_dir, waveforms),
        "tolerance": TOLERANCE,
    }


def main() -> None:
    import argparse

    from model.evaluation.evaluate import DEFAULT_DATA, load_eval_set
    from model.export.artifact import write_metadata
    from model.training.architecture import ARCHITECTURES

    parser = argparse.ArgumentParser(description="Add model.onnx to a trained artifact.")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        help="architecture to rebuild (default: the name in metadata.json)",
    )
    args = parser.parse_args()
    metadata = json.loads((args.artifact / METADATA_FILE).read_text())
    if "members" in metadata["architecture"]:
        parser.error(
            "an ensemble: rebuild it with model.training.ensemble, which writes model.onnx too"
        )
    keras_model = rebuild_keras_model(args.artifact, args.arch or metadata["architecture"]["name"])
    val_waveforms, _, _ = load_eval_set(args.data, "val")
    temperature = metadata.get("calibration", {}).get("temperature", 1.0)  # 1: uncalibrated
    metadata["onnx"] = write_onnx(args.artifact, [(keras_model, temperature)], val_waveforms)
    write_metadata(args.artifact, metadata)
    print(json.dumps(metadata["onnx"], indent=2))


if __name__ == "__main__":
    main()
