"""A small depthwise-separable CNN (DS-CNN, Zhang et al. 2017 "Hello Edge") on log-mel features.

Depthwise-separable blocks give most of a plain CNN's accuracy at a fraction of the
multiply-adds, which matters because the labelling pipeline scores thousands of windows on CPU.
"""

import math

import keras

from model.contract import CLIP_SAMPLES, LABELS
from model.features import FFT_LENGTH, FRAMES, MEL_BINS, WINDOW_SAMPLES, LogMelSpectrogram

ARCHITECTURE_NAME = "ds-cnn-logmel40"
STEM_CHANNELS = 32  # the stem convolution sees one input channel, so it is costly per filter
CHANNELS = 64
STEM_STRIDES = (2, 2)
# TensorFlow depthwise convolutions need equal row and column strides.
DS_BLOCK_STRIDES = ((1, 1), (2, 2), (1, 1), (1, 1))
BN_MOMENTUM = 0.9  # moving statistics settle within an epoch, so val accuracy is meaningful early
DROPOUT = 0.2


def ds_block(x: keras.KerasTensor, strides: tuple[int, int], index: int) -> keras.KerasTensor:
    """Depthwise 3x3 then pointwise 1x1 convolution, each followed by batch norm and ReLU."""
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"ds{index}_depthwise"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"ds{index}_depthwise_bn")(x)
    x = keras.layers.ReLU(name=f"ds{index}_depthwise_relu")(x)
    x = keras.layers.Conv2D(CHANNELS, 1, use_bias=False, name=f"ds{index}_pointwise")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"ds{index}_pointwise_bn")(x)
    return keras.layers.ReLU(name=f"ds{index}_pointwise_relu")(x)


def build_model() -> keras.Model:
    """Waveform float32 [batch, 16000] -> logits [batch, 4]; softmax is added at export."""
    waveform = keras.Input((CLIP_SAMPLES,), name="waveform")
    x = LogMelSpectrogram(name="log_mel")(waveform)
    # Per-mel-bin normalisation learnt from the training data, instead of hand-set constants.
    x = keras.layers.BatchNormalization(axis=2, momentum=BN_MOMENTUM, name="feature_norm")(x)
    x = keras.layers.Conv2D(
        STEM_CHANNELS, (10, 4), strides=STEM_STRIDES, padding="same", use_bias=False, name="conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="conv_bn")(x)
    x = keras.layers.ReLU(name="conv_relu")(x)
    for index, strides in enumerate(DS_BLOCK_STRIDES):
        x = ds_block(x, strides, index)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(DROPOUT, name="dropout")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(waveform, logits, name=ARCHITECTURE_NAME)


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
        "name": ARCHITECTURE_NAME,
        "summary": (
            f"log-mel {FRAMES}x{MEL_BINS} -> BN -> conv 10x4 stride {STEM_STRIDES}"
            f" {STEM_CHANNELS}ch -> {len(DS_BLOCK_STRIDES)} depthwise-separable blocks"
            f" {CHANNELS}ch (strides {DS_BLOCK_STRIDES}) -> global average pool"
            f" -> dropout {DROPOUT} -> dense {len(LABELS)} -> softmax"
        ),
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "macs_per_window": net + features,
        "network_macs_per_window": net,
        "feature_macs_per_window_approx": features,
    }
