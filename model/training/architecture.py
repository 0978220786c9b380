"""Candidate networks on the shared log-mel front end, with train-only SpecAugment.

Three families are compared on the same splits, seed and training recipe (see the model card):

- `ds-cnn`: depthwise-separable CNN (Zhang et al. 2017, "Hello Edge"); `ds-cnn-m`, the shipped
  design, is the same with twice the channels.
- `tutorial-cnn`: the TensorFlow "simple audio recognition" tutorial CNN (resize to 32x32, two
  3x3 convolutions, max pool, dense 128), as a plain baseline.
- `bc-resnet`: a small broadcast-residual network (Kim et al. 2021, "BC-ResNet"): frequency-wise
  depthwise convolutions plus a temporal branch on the frequency-averaged map, broadcast back.

Every model maps waveforms float32 [batch, 16000] to logits [batch, 4]; the temperature-scaled
softmax is added at export.
"""

import functools
import math
from collections.abc import Callable

import keras

from model.contract import CLIP_SAMPLES, LABELS
from model.training.feature_settings import FFT_LENGTH, FRAMES, MEL_BINS, WINDOW_SAMPLES
from model.training.features import LogMelSpectrogram, LoudnessNormalisation

DEFAULT_ARCHITECTURE = "ds-cnn-m"
BN_MOMENTUM = 0.9  # moving statistics settle within an epoch, so val accuracy is meaningful early
# SpecAugment (Park et al. 2019), training only: masks per example and their widest extent.
TIME_MASKS, TIME_MASK_FRAMES = 2, 6  # of 49 frames (20 ms each)
FREQ_MASKS, FREQ_MASK_BINS = 2, 5  # of 40 mel bins
SPEC_AUGMENT_SEED = 1234


class SpecAugment(keras.layers.Layer):
    """Zero random time and frequency bands of normalised features; identity at inference."""

    def __init__(self, seed: int = SPEC_AUGMENT_SEED, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _band_mask(self, batch: int, length: int, max_width: int, count: int) -> keras.KerasTensor:
        """float [batch, length]: 0 inside `count` random bands of up to max_width, else 1."""
        ops = keras.ops
        positions = ops.cast(ops.arange(length), "float32")[None, :]
        keep = ops.ones((batch, length))
        for _ in range(count):
            width = ops.floor(
                keras.random.uniform((batch, 1), seed=self.seed_generator) * (max_width + 1)
            )
            start = ops.floor(
                keras.random.uniform((batch, 1), seed=self.seed_generator) * (length - width + 1)
            )
            inside = ops.logical_and(positions >= start, positions < start + width)
            keep = keep * (1.0 - ops.cast(inside, "float32"))
        return keep

    def call(self, features: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        if not training:
            return features
        batch = keras.ops.shape(features)[0]
        time_keep = self._band_mask(batch, FRAMES, TIME_MASK_FRAMES, TIME_MASKS)
        freq_keep = self._band_mask(batch, MEL_BINS, FREQ_MASK_BINS, FREQ_MASKS)
        return features * time_keep[:, :, None, None] * freq_keep[:, None, :, None]


def front_end(waveform: keras.KerasTensor, normalise_loudness: bool = False) -> keras.KerasTensor:
    """Log-mel [batch, 49, 40, 1], per-mel-bin batch norm, SpecAugment while training; with
    normalise_loudness, each clip is first scaled to one RMS level."""
    if normalise_loudness:
        waveform = LoudnessNormalisation(name="loudness")(waveform)
    x = LogMelSpectrogram(name="log_mel")(waveform)
    # Per-mel-bin normalisation learnt from the training data, instead of hand-set constants.
    x = keras.layers.BatchNormalization(axis=2, momentum=BN_MOMENTUM, name="feature_norm")(x)
    return SpecAugment(name="spec_augment")(x)


def conv_bn_relu(x: keras.KerasTensor, layer: keras.layers.Layer, name: str) -> keras.KerasTensor:
    x = layer(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_ds_cnn(
    stem_width: int = 32,
    width: int = 64,
    name: str = "ds-cnn",
    normalise_loudness: bool = False,
    block_strides: tuple[int, ...] = (1, 2, 1, 1),
) -> keras.Model:
    """Conv 10x4 stride 2 -> depthwise-separable blocks (one per stride) -> pool -> dropout ->
    dense."""
    waveform = keras.Input((CLIP_SAMPLES,), name="waveform")
    x = front_end(waveform, normalise_loudness)
    stem = keras.layers.Conv2D(
        stem_width, (10, 4), strides=2, padding="same", use_bias=False, name="conv"
    )
    x = conv_bn_relu(x, stem, "conv")
    # TensorFlow depthwise convolutions need equal row and column strides.
    for index, stride in enumerate(block_strides):
        depthwise = keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False, name=f"ds{index}_depthwise"
        )
        x = conv_bn_relu(x, depthwise, f"ds{index}_depthwise")
        pointwise = keras.layers.Conv2D(width, 1, use_bias=False, name=f"ds{index}_pointwise")
        x = conv_bn_relu(x, pointwise, f"ds{index}_pointwise")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(waveform, logits, name=name)


def build_tutorial_cnn() -> keras.Model:
    """The TensorFlow simple-audio tutorial CNN on the same log-mel features."""
    waveform = keras.Input((CLIP_SAMPLES,), name="waveform")
    x = front_end(waveform)
    x = keras.layers.Resizing(32, 32, name="resize")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.25, name="dropout1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(0.5, name="dropout2")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(waveform, logits, name="tutorial-cnn")


def bc_block(
    x: keras.KerasTensor, channels: int, freq_stride: int, dilation: int, name: str
) -> keras.KerasTensor:
    """Broadcast-residual block: frequency depthwise conv (f2) plus a temporal branch (f1) on the
    frequency-averaged map, broadcast over frequency; identity shortcut unless shape changes."""
    transition = x.shape[-1] != channels or freq_stride != 1
    if transition:
        x = conv_bn_relu(
            x,
            keras.layers.Conv2D(
                channels, 1, strides=(1, freq_stride), use_bias=False, name=f"{name}_expand"
            ),
            f"{name}_expand",
        )
    f2 = keras.layers.DepthwiseConv2D(
        (1, 3), padding="same", use_bias=False, name=f"{name}_freq_dw"
    )(x)
    f2 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_freq_bn")(f2)
    f1 = keras.ops.mean(f2, axis=2, keepdims=True)
    f1 = keras.layers.DepthwiseConv2D(
        (3, 1), padding="same", dilation_rate=(dilation, 1), use_bias=False, name=f"{name}_time_dw"
    )(f1)
    f1 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_time_bn")(f1)
    f1 = keras.layers.Activation("swish", name=f"{name}_swish")(f1)
    f1 = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_pointwise")(f1)
    f1 = keras.layers.SpatialDropout2D(0.1, name=f"{name}_dropout")(f1)
    out = f2 + f1 if transition else x + f2 + f1
    return keras.layers.ReLU(name=f"{name}_relu")(out)


def build_bc_resnet(name: str = "bc-resnet", normalise_loudness: bool = False) -> keras.Model:
    """Stem 5x5 (24 ch, frequency stride 2) -> 4 stages of 2 broadcast-residual blocks -> head."""
    waveform = keras.Input((CLIP_SAMPLES,), name="waveform")
    x = front_end(waveform, normalise_loudness)
    stem = keras.layers.Conv2D(24, 5, strides=(1, 2), padding="same", use_bias=False, name="stem")
    x = conv_bn_relu(x, stem, "stem")
    stages = ((24, 1, 1), (32, 2, 2), (48, 2, 4), (64, 1, 8))  # channels, freq stride, dilation
    for stage, (channels, freq_stride, dilation) in enumerate(stages):
        x = bc_block(x, channels, freq_stride, dilation, f"bc{stage}a")
        x = bc_block(x, channels, 1, dilation, f"bc{stage}b")
    x = conv_bn_relu(x, keras.layers.Conv2D(64, 1, use_bias=False, name="head"), "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(waveform, logits, name=name)


# Twice the channels of `ds-cnn` (2.9x its multiply-adds), near Hello Edge's DS-CNN-M; the
# shipped members are built on it.
build_ds_cnn_m = functools.partial(build_ds_cnn, stem_width=64, width=128)
# Two more blocks: the receptive field spans the whole 1 s window (50 of 49 frames, against
# 34), for 1.3x the multiply-adds.
DEEP_BLOCK_STRIDES = (1, 2, 1, 1, 1, 1)

ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "ds-cnn": build_ds_cnn,
    "ds-cnn-m": lambda: build_ds_cnn_m(name="ds-cnn-m"),
    # ds-cnn-m on loudness-normalised input (model.training.features.LoudnessNormalisation).
    "ds-cnn-m-ln": lambda: build_ds_cnn_m(name="ds-cnn-m-ln", normalise_loudness=True),
    "ds-cnn-m-deep": lambda: build_ds_cnn_m(name="ds-cnn-m-deep", block_strides=DEEP_BLOCK_STRIDES),
    "ds-cnn-m-deep-ln": lambda: build_ds_cnn_m(
        name="ds-cnn-m-deep-ln", normalise_loudness=True, block_strides=DEEP_BLOCK_STRIDES
    ),
    "tutorial-cnn": build_tutorial_cnn,
    "bc-resnet": build_bc_resnet,
    # bc-resnet on loudness-normalised input (measured as member B: model/README.md, appendix).
    "bc-resnet-ln": lambda: build_bc_resnet(name="bc-resnet-ln", normalise_loudness=True),
}


def build_model(name: str = DEFAULT_ARCHITECTURE) -> keras.Model:
    """Waveform float32 [batch, 16000] -> logits [batch, 4] for a name in ARCHITECTURES."""
    return ARCHITECTURES[name]()


def feature_macs() -> int:
    """Approximate multiply-adds of the log-mel front end for one 1 s window.

    Windowing, a real FFT (~ N/2 log2 N complex products, ~4 real multiply-adds each) and the mel
    projection, per frame.
    """
    fft_macs = 4 * (FFT_LENGTH // 2) * int(math.log2(FFT_LENGTH))
    mel_macs = (FFT_LENGTH // 2 + 1) * MEL_BINS
    return FRAMES * (WINDOW_SAMPLES + fft_macs + mel_macs)


def network_macs(model: keras.Model) -> int:
    """Multiply-adds of the convolution and dense layers for one window (batch norm excluded:
    it folds into the preceding convolution at inference)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, channels = layer.output.shape
            total += height * width * channels * math.prod(layer.kernel_size)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            total += height * width * channels * math.prod(layer.kernel_size) * in_channels
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def describe(model: keras.Model) -> dict:
    """Name, size and cost of the architecture, for metadata.json and the model card."""
    net = network_macs(model)
    features = feature_macs()
    return {
        "name": model.name,
        "features": f"log-mel {FRAMES}x{MEL_BINS}, per-bin batch norm",
        "spec_augment": {
            "time_masks": TIME_MASKS,
            "max_frames": TIME_MASK_FRAMES,
            "freq_masks": FREQ_MASKS,
            "max_bins": FREQ_MASK_BINS,
        },
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "macs_per_window": net + features,
        "network_macs_per_window": net,
        "feature_macs_per_window_approx": features,
    }
