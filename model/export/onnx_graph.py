"""The ONNX graph pieces that the one-window model (model.export.onnx_export) and the stream
model (model.export.onnx_stream) share: a graph builder, the log-mel front end as a factorised
DFT, and the loudness gain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model.contract import CLIP_SAMPLES

if TYPE_CHECKING:
    pass

# Opset 18 (ReduceMean axes as an input, Split num_outputs); onnxruntime >= 1.14 runs it. The IR
# version is pinned to the minimum for the opset: the `onnx` package writes its newest IR
# version by default (14 for onnx 1.23), which older onnxruntime releases refuse to load.
OPSET = 18
DFT_SPLIT = 32  # N2 of FFT_LENGTH = N1 * N2; must divide FFT_LENGTH, HOP_SAMPLES and CLIP_SAMPLES


@dataclass
class GraphBuilder:
    """Accumulates ONNX nodes and initializers with unique names."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, hint: str, *values: int) -> str:
        return self.const(hint, list(values), np.int64)

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1, **attrs: Any):
        from onnx import helper

        names = [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names


def hann_window(length: int) -> np.ndarray:
    """tf.signal.hann_window(length), periodic, in float64."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def log_mel(b: GraphBuilder, waveform: str, mel_matrix: np.ndarray, gain: str | None = None) -> str:
    """waveform [batch, CLIP_SAMPLES] -> log-mel [batch, 1, FRAMES, MEL_BINS] (NCHW of the Keras
    [batch, FRAMES, MEL_BINS, 1]), as model.training.features.LogMelSpectrogram; with `gain` [batch,
    1], the log-mel of waveform x gain (the mel spectrum is scaled, which is the same for a gain >
    0: the STFT, its magnitude and the mel projection are all linear in it)."""
    from model.training.feature_settings import FRAMES, LOG_OFFSET

    x = mel_spectrum(b, waveform, mel_matrix, -1, FRAMES)
    if gain is not None:
        x = b.op("Mul", [x, b.op("Unsqueeze", [gain, b.ints("axis", 2)], "gain_3d")], "scaled")
    x = b.op("Log", [b.op("Add", [x, b.const("log_offset", LOG_OFFSET)], "mel_offset")], "log")
    x = b.op("Transpose", [x], "log_mel_t", perm=[0, 2, 1])  # [batch, f, mel]
    return b.op("Unsqueeze", [x, b.ints("axis", 1)], "log_mel")


def mel_spectrum(
    b: GraphBuilder, waveform: str, mel_matrix: np.ndarray, batch: int, frames: int
) -> str:
    """waveform [batch, samples] -> mel magnitudes [batch, MEL_BINS, frames] of its STFT frames
    (model.training.features' framing, no padding). One of `batch` and `frames` may be -1 (dynamic):
    a batch of 1 s clips has FRAMES frames each; a single stream of any length
    (model.export.onnx_stream) is a batch of 1."""
    from model.training.feature_settings import FFT_LENGTH, HOP_SAMPLES, MEL_BINS, WINDOW_SAMPLES

    n2_count = DFT_SPLIT
    if FFT_LENGTH % n2_count or HOP_SAMPLES % n2_count or CLIP_SAMPLES % n2_count:
        raise NotImplementedError(f"DFT_SPLIT {n2_count} must divide fft, hop and clip length")
    n1_count = FFT_LENGTH // n2_count  # stage-1 DFT size (16)
    taps = -(-WINDOW_SAMPLES // n2_count)  # stage-1 kernel: window rows of n2_count samples (15)
    stride = HOP_SAMPLES // n2_count
    if frames != -1 and (CLIP_SAMPLES // n2_count - taps) // stride + 1 != frames:
        raise NotImplementedError(f"the factorised framing does not give {frames} frames")
    k2_count = FFT_LENGTH // 2 // n1_count + 1  # k = k1 + n1_count * k2 covers 0..FFT_LENGTH/2
    window = np.zeros(taps * n2_count)
    window[:WINDOW_SAMPLES] = hann_window(WINDOW_SAMPLES)

    # Sample m = n2_count * n1 + n2 of a frame, bin k = k1 + n1_count * k2:
    # X[k] = sum_n2 e^{-2pi i n2 k2 / n2_count} * B[n2, k1],
    # B[n2, k1] = sum_n1 x[m] w[m] e^{-2pi i (n1 k1 / n1_count + n2 k1 / FFT_LENGTH)}.
    n1, k1, n2 = np.arange(taps), np.arange(n1_count), np.arange(n2_count)
    phase = (
        2 * np.pi * (np.outer(k1, n1)[None] / n1_count + np.outer(n2, k1)[:, :, None] / FFT_LENGTH)
    )  # [n2, k1, n1]
    taper = window.reshape(taps, n2_count).T[:, None, :]  # [n2, 1, n1]
    stage1 = np.stack([taper * np.cos(phase), -taper * np.sin(phase)], axis=1)  # [n2, ri, k1, n1]
    stage1 = stage1.reshape(n2_count * 2 * n1_count, 1, taps)
    angle = 2 * np.pi * np.outer(np.arange(k2_count), n2) / n2_count  # [k2, n2]
    stage2 = np.zeros((2, k2_count, n2_count, 2))  # [(re, im) out, k2, n2, (re, im) in]
    stage2[0, :, :, 0], stage2[0, :, :, 1] = np.cos(angle), np.sin(angle)
    stage2[1, :, :, 0], stage2[1, :, :, 1] = -np.sin(angle), np.cos(angle)
    stage2 = stage2.reshape(2 * k2_count, 2 * n2_count)
    bins = k2_count * n1_count  # row k2 * n1_count + k1 is bin k; rows past FFT_LENGTH/2 unused
    mel = np.zeros((bins, MEL_BINS))
    mel[: FFT_LENGTH // 2 + 1] = mel_matrix

    columns = CLIP_SAMPLES // n2_count if batch == -1 else -1
    columns_major = b.op("Reshape", [waveform, b.ints("shape", batch, columns, n2_count)], "blocks")
    x = b.op("Transpose", [columns_major], "by_phase", perm=[0, 2, 1])  # [batch, n2, columns]
    x = b.op(
        "Conv",
        [x, b.const("dft_stage1", stage1)],
        "dft_stage1",
        group=n2_count,
        kernel_shape=[taps],
        strides=[stride],
    )  # [batch, (n2, ri, k1), frames]
    frame_columns = -1 if frames == -1 else n1_count * frames
    x = b.op("Reshape", [x, b.ints("shape", batch, 2 * n2_count, frame_columns)], "stage1")
    x = b.op("MatMul", [b.const("dft_stage2", stage2), x], "dft")  # [batch, (ri, k2), (k1, f)]
    x = b.op("Mul", [x, x], "power_parts")
    parts = -1 if frames == -1 else k2_count * n1_count * frames
    x = b.op("Reshape", [x, b.ints("shape", batch, 2, parts)], "parts")
    real, imag = b.op("Split", [x], "part", outputs=2, axis=1, num_outputs=2)
    x = b.op("Sqrt", [b.op("Add", [real, imag], "power")], "magnitude")
    x = b.op("Reshape", [x, b.ints("shape", batch, bins, frames)], "spectrum")  # [batch, k, f]
    return b.op("MatMul", [b.const("mel_matrix_t", mel.T), x], "mel")  # [batch, mel, f]


def gain_of_power(b: GraphBuilder, mean_power: str, target_rms: float) -> str:
    """target_rms / max(sqrt(mean_power), RMS_FLOOR): the loudness gain of a mean power."""
    from model.training.feature_settings import RMS_FLOOR

    level = b.op("Sqrt", [mean_power], "rms")
    level = b.op("Max", [level, b.const("rms_floor", RMS_FLOOR)], "level")
    return b.op("Div", [b.const("target_rms", target_rms), level], "gain")
