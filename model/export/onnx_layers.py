"""One ONNX converter per Keras layer type, for model.export.onnx_export.build_onnx.

A converter writes the nodes of one Keras operation into a GraphBuilder and returns the name of
the ONNX tensor that holds the operation's output, in NCHW layout. `converter_for` picks it;
a layer without one raises NotImplementedError rather than exporting a wrong graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.export.onnx_graph import GraphBuilder, gain_of_power, log_mel


@dataclass
class Conversion:
    """The state of one Keras model's conversion: its ONNX tensor names and what the converters
    decided about later layers (a batch norm folded into its convolution, a loudness gain moved
    onto the mel spectrum)."""

    graph: GraphBuilder
    temperature: float
    output_tensor: Any  # the Keras model's output: the logits the temperature divides
    consumers: dict[int, list]  # id(KerasTensor) -> the operations reading it
    names: dict[int, str] = field(default_factory=dict)  # id(KerasTensor) -> ONNX tensor name
    folded: set[int] = field(default_factory=set)  # ids of batch norms folded into a convolution
    gains: dict[int, str] = field(default_factory=dict)  # id(tensor) -> gain its log-mel applies


@dataclass(frozen=True)
class Layer:
    """One Keras operation as a converter sees it."""

    operation: Any
    inputs: list  # its input KerasTensors
    output: Any  # its (only) output KerasTensor
    x: str  # the ONNX name of its first input

    @property
    def rank(self) -> int:
        return len(self.inputs[0].shape)

    @property
    def where(self) -> str:
        return f"{self.operation.name} ({type(self.operation).__name__})"


Converter = Callable[[Conversion, Layer], str]


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (the odd pixel at the end) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def conv_pads(layer: Layer, kernel: tuple, strides: tuple, dilation: tuple) -> list[int]:
    """ONNX pads [top, left, bottom, right] of a Keras convolution or pooling layer."""
    padding = layer.operation.padding
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding != "same":
        raise NotImplementedError(f"{layer.where}: padding {padding!r}")
    (top, bottom), (left, right) = (
        same_pads(layer.inputs[0].shape[axis + 1], kernel[axis], strides[axis], dilation[axis])
        for axis in (0, 1)
    )
    return [top, left, bottom, right]


def batch_norm_affine(operation: Any) -> tuple[np.ndarray, np.ndarray]:
    """Inference-time BatchNormalization as x * scale + shift."""
    variance = np.asarray(operation.moving_variance, np.float64)
    scale = 1.0 / np.sqrt(variance + operation.epsilon)
    if operation.scale:
        scale = scale * np.asarray(operation.gamma, np.float64)
    shift = -np.asarray(operation.moving_mean, np.float64) * scale
    if operation.center:
        shift = shift + np.asarray(operation.beta, np.float64)
    return scale, shift


def nchw_axis(axis: int, rank: int) -> int:
    """A Keras channels-last axis of a rank-4 tensor -> the same axis in NCHW."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def activation(graph: GraphBuilder, x: str, function: Any, where: str) -> str:
    name = getattr(function, "__name__", str(function))
    if name == "linear":
        return x
    if name == "relu":
        return graph.op("Relu", [x], "relu")
    if name in ("swish", "silu"):
        return graph.op("Mul", [x, graph.op("Sigmoid", [x], "sigmoid")], "swish")
    if name == "sigmoid":
        return graph.op("Sigmoid", [x], "sigmoid")
    raise NotImplementedError(f"{where}: activation {name!r}")


def bias_of(operation: Any, outputs: int) -> np.ndarray:
    """The layer's bias in float64, zeros where it has none."""
    return np.asarray(operation.bias, np.float64) if operation.use_bias else np.zeros(outputs)


def pass_through(conversion: Conversion, layer: Layer) -> str:
    """Dropout, SpatialDropout2D, SpecAugment: identities unless training."""
    return layer.x


def convert_log_mel(conversion: Conversion, layer: Layer) -> str:
    mel_matrix = np.asarray(layer.operation.mel_matrix, np.float64)
    gain = conversion.gains.get(id(layer.inputs[0]))
    return log_mel(conversion.graph, layer.x, mel_matrix, gain)


def convert_loudness(conversion: Conversion, layer: Layer) -> str:
    """LoudnessNormalisation: the gain that brings each clip to TARGET_RMS."""
    from model.training.feature_settings import TARGET_RMS
    from model.training.features import LogMelSpectrogram

    graph = conversion.graph
    power = graph.op("Mul", [layer.x, layer.x], "square")
    mean_power = graph.op("ReduceMean", [power, graph.ints("axes", 1)], "mean_power", keepdims=1)
    gain = gain_of_power(graph, mean_power, TARGET_RMS)
    readers = conversion.consumers.get(id(layer.output), [])
    if all(isinstance(reader, LogMelSpectrogram) for reader in readers):
        # Applied to the mel spectrum instead: the front end then reads the raw waveform, like
        # every other network's, and an ensemble computes it once.
        conversion.gains[id(layer.output)] = gain
        return layer.x
    return graph.op("Mul", [layer.x, gain], "normalised")


def foldable_batch_norm(conversion: Conversion, layer: Layer) -> Any | None:
    """The BatchNormalization that alone reads a linear convolution's output, if any."""
    import keras

    readers = conversion.consumers.get(id(layer.output), [])
    if (
        len(readers) == 1
        and isinstance(readers[0], keras.layers.BatchNormalization)
        and [axis % 4 for axis in np.atleast_1d(readers[0].axis)] == [3]
        and getattr(layer.operation.activation, "__name__", "") == "linear"
    ):
        return readers[0]
    return None


def convert_convolution(conversion: Conversion, layer: Layer) -> str:
    """Conv2D or DepthwiseConv2D, with the batch norm that follows it folded in."""
    import keras

    operation, graph = layer.operation, conversion.graph
    if operation.data_format != "channels_last" or layer.rank != 4:
        raise NotImplementedError(f"{layer.where}: only channels_last 2-D convolutions")
    kernel = np.asarray(operation.kernel, np.float64)
    height, width, channels_in, last = kernel.shape
    if isinstance(operation, keras.layers.DepthwiseConv2D):
        weights = kernel.transpose(2, 3, 0, 1).reshape(channels_in * last, 1, height, width)
        group = channels_in
    else:
        weights = kernel.transpose(3, 2, 0, 1)
        group = getattr(operation, "groups", 1)
    bias = bias_of(operation, weights.shape[0])
    batch_norm = foldable_batch_norm(conversion, layer)
    if batch_norm is not None:
        scale, shift = batch_norm_affine(batch_norm)
        weights = weights * scale[:, None, None, None]
        bias = bias * scale + shift
        conversion.folded.add(id(batch_norm))
    strides, dilation = tuple(operation.strides), tuple(operation.dilation_rate)
    y = graph.op(
        "Conv",
        [
            layer.x,
            graph.const(f"{operation.name}_w", weights),
            graph.const(f"{operation.name}_b", bias),
        ],
        operation.name,
        kernel_shape=[height, width],
        strides=list(strides),
        dilations=list(dilation),
        pads=conv_pads(layer, (height, width), strides, dilation),
        group=group,
    )
    return activation(graph, y, operation.activation, layer.where)


def convert_batch_norm(conversion: Conversion, layer: Layer) -> str:
    """A batch norm not folded into a convolution: Mul and Add on its channel axis."""
    if id(layer.operation) in conversion.folded:
        return layer.x
    graph = conversion.graph
    axes = [nchw_axis(axis, layer.rank) for axis in np.atleast_1d(layer.operation.axis)]
    if len(axes) != 1:
        raise NotImplementedError(f"{layer.where}: multi-axis batch norm")
    scale, shift = batch_norm_affine(layer.operation)
    shape = [1] * layer.rank
    shape[axes[0]] = len(scale)
    scale_name = graph.const("bn_scale", scale.reshape(shape[1:]))
    y = graph.op("Mul", [layer.x, scale_name], layer.operation.name)
    return graph.op("Add", [y, graph.const("bn_shift", shift.reshape(shape[1:]))], "bn")


def convert_relu(conversion: Conversion, layer: Layer) -> str:
    operation = layer.operation
    if operation.max_value is not None or operation.negative_slope or operation.threshold:
        raise NotImplementedError(f"{layer.where}: only plain ReLU")
    return conversion.graph.op("Relu", [layer.x], operation.name)


def convert_activation(conversion: Conversion, layer: Layer) -> str:
    return activation(conversion.graph, layer.x, layer.operation.activation, layer.where)


def convert_global_average_pool(conversion: Conversion, layer: Layer) -> str:
    if layer.operation.data_format != "channels_last":
        raise NotImplementedError(f"{layer.where}: only channels_last")
    y = conversion.graph.op("GlobalAveragePool", [layer.x], layer.operation.name)
    if not layer.operation.keepdims:
        y = conversion.graph.op("Flatten", [y], "pooled", axis=1)
    return y


def convert_pooling(conversion: Conversion, layer: Layer) -> str:
    """MaxPooling2D or AveragePooling2D (padding not counted in the average)."""
    import keras

    pool, strides = tuple(layer.operation.pool_size), tuple(layer.operation.strides)
    is_max = isinstance(layer.operation, keras.layers.MaxPooling2D)
    return conversion.graph.op(
        "MaxPool" if is_max else "AveragePool",
        [layer.x],
        layer.operation.name,
        kernel_shape=list(pool),
        strides=list(strides),
        pads=conv_pads(layer, pool, strides, (1, 1)),
        **({} if is_max else {"count_include_pad": 0}),
    )


def convert_resizing(conversion: Conversion, layer: Layer) -> str:
    operation, graph = layer.operation, conversion.graph
    if (
        operation.interpolation != "bilinear"
        or operation.crop_to_aspect_ratio
        or operation.pad_to_aspect_ratio
        or operation.antialias
    ):
        raise NotImplementedError(f"{layer.where}: only plain bilinear resizing")
    shape = graph.op("Shape", [layer.x], "shape")
    batch_channels = graph.op(
        "Slice", [shape, graph.ints("start", 0), graph.ints("end", 2)], "batch_channels"
    )
    size = graph.ints("size", operation.height, operation.width)
    sizes = graph.op("Concat", [batch_channels, size], "sizes", axis=0)
    return graph.op(
        "Resize",
        [layer.x, "", "", sizes],
        operation.name,
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )


def convert_flatten(conversion: Conversion, layer: Layer) -> str:
    x = layer.x
    if layer.rank == 4:  # Keras flattens channels-last: (h, w, c) order
        x = conversion.graph.op("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
    return conversion.graph.op("Flatten", [x], layer.operation.name, axis=1)


def convert_dense(conversion: Conversion, layer: Layer) -> str:
    """Dense on a rank-2 tensor; the model's logits layer also divides by the temperature (in
    its weights, when it has no activation)."""
    operation, graph = layer.operation, conversion.graph
    if layer.rank != 2:
        raise NotImplementedError(f"{layer.where}: Dense on rank {layer.rank}")
    kernel = np.asarray(operation.kernel, np.float64)
    bias = bias_of(operation, kernel.shape[1])
    is_logits = layer.output is conversion.output_tensor
    linear = getattr(operation.activation, "__name__", "") == "linear"
    if is_logits and linear:
        kernel, bias = kernel / conversion.temperature, bias / conversion.temperature
    weights = [graph.const(f"{operation.name}_w", kernel), graph.const(f"{operation.name}_b", bias)]
    y = graph.op("Gemm", [layer.x, *weights], operation.name)
    y = activation(graph, y, operation.activation, layer.where)
    if is_logits and not linear:
        y = graph.op("Div", [y, graph.const("temperature", conversion.temperature)], "scaled")
    return y


def convert_add(conversion: Conversion, layer: Layer) -> str:
    """keras.ops.add or layers.Add of two or more tensors."""
    if len(layer.inputs) < 2:
        raise NotImplementedError(f"no ONNX conversion for {layer.where} of one input")
    y = layer.x
    for other in layer.inputs[1:]:
        y = conversion.graph.op("Add", [y, conversion.names[id(other)]], layer.operation.name)
    return y


def convert_mean(conversion: Conversion, layer: Layer) -> str:
    """keras.ops.mean over some axes."""
    axes = [nchw_axis(axis, layer.rank) for axis in np.atleast_1d(layer.operation.axis)]
    return conversion.graph.op(
        "ReduceMean",
        [layer.x, conversion.graph.ints("axes", *axes)],
        layer.operation.name,
        keepdims=int(layer.operation.keepdims),
    )


# Operations that are not layers, known by their class name.
CONVERTERS_BY_NAME: dict[str, Converter] = {
    "SpecAugment": pass_through,
    "Add": convert_add,
}


def converter_for(operation: Any) -> Converter:
    """The converter of a Keras operation; NotImplementedError for one without."""
    import keras

    from model.training.features import LogMelSpectrogram, LoudnessNormalisation

    layers = keras.layers
    by_class: tuple[tuple[type | tuple[type, ...], Converter], ...] = (
        (LogMelSpectrogram, convert_log_mel),
        (LoudnessNormalisation, convert_loudness),
        ((layers.Dropout, layers.SpatialDropout2D), pass_through),
        ((layers.Conv2D, layers.DepthwiseConv2D), convert_convolution),
        (layers.BatchNormalization, convert_batch_norm),
        (layers.ReLU, convert_relu),
        (layers.Activation, convert_activation),
        (layers.GlobalAveragePooling2D, convert_global_average_pool),
        ((layers.MaxPooling2D, layers.AveragePooling2D), convert_pooling),
        (layers.Resizing, convert_resizing),
        (layers.Flatten, convert_flatten),
        (layers.Dense, convert_dense),
    )
    for classes, converter in by_class:
        if isinstance(operation, classes):
            return converter
    kind = type(operation)
    if kind.__name__ == "Mean" and kind.__module__.startswith("keras.src.ops"):
        return convert_mean
    if kind.__name__ in CONVERTERS_BY_NAME:
        return CONVERTERS_BY_NAME[kind.__name__]
    raise NotImplementedError(f"no ONNX conversion for {operation.name} ({kind.__name__})")
