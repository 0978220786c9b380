"""The ONNX graph pieces that the one-window model (model.export.onnx_export) and the stream
model (model.export.onnx_stream) share: a graph builder, the log-mel front end as a factorised
DFT, and the loudness gain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.contract import CLIP_SAMPLES

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


def log_mel(
    graph: GraphBuilder, waveform: str, mel_matrix: np.ndarray, gain: str | None = None
) -> str:
    """waveform [batch, CLIP_SAMPLES] -> log-mel [batch, 1, FRAMES, MEL_BINS] (NCHW of the Keras
    [batch, FRAMES, MEL_BINS, 1]), as model.training.features.LogMelSpectrogram; with `gain` [batch,
    1], the log-mel of waveform x gain (the mel spectrum is scaled, which is the same for a gain >
    0: the STFT, its magnitude and the mel projection are all linear in it)."""
    from model.training.feature_settings import FRAMES, LOG_OFFSET

    x = mel_spectrum(graph, waveform, mel_matrix, -1, FRAMES)
    if gain is not None:
        x = graph.op(
            "Mul", [x, graph.op("Unsqueeze", [gain, graph.ints("axis", 2)], "gain_3d")], "scaled"
        )
    x = graph.op(
        "Log", [graph.op("Add", [x, graph.const("log_offset", LOG_OFFSET)], "mel_offset")], "log"
    )
    x = graph.op("Transpose", [x], "log_mel_t", perm=[0, 2, 1])  # [batch, f, mel]
    return graph.op("Unsqueeze", [x, graph.ints("axis", 1)], "log_mel")


@dataclass(frozen=True)
class FactorisedDft:
    """The weights of the two-stage real DFT of each Hann-windowed frame, FFT_LENGTH = n1_count x
    n2_count (n2_count = DFT_SPLIT), with the mel projection of its bins.

    Sample m = n2_count * n1 + n2 of a frame, bin k = k1 + n1_count * k2:
    X[k] = sum_n2 e^{-2pi i n2 k2 / n2_count} * B[n2, k1],
    B[n2, k1] = sum_n1 x[m] w[m] e^{-2pi i (n1 k1 / n1_count + n2 k1 / FFT_LENGTH)}.
    """

    n1_count: int  # stage-1 DFT size (16)
    n2_count: int
    k2_count: int  # k = k1 + n1_count * k2 covers 0..FFT_LENGTH/2
    taps: int  # stage-1 kernel: window rows of n2_count samples (15)
    stride: int  # stage-1 stride in rows: the hop
    stage1: np.ndarray  # [(n2, ri, k1), 1, taps]: window, 16-point DFT and twiddles
    stage2: np.ndarray  # [(ri, k2), (n2, ri)]: the 32-point DFT
    mel: np.ndarray  # [bins, MEL_BINS]: row k2 * n1_count + k1 is bin k; rows past FFT/2 zero

    @property
    def bins(self) -> int:
        return self.k2_count * self.n1_count

    @classmethod
    def of(cls, mel_matrix: np.ndarray) -> FactorisedDft:
        from model.training.feature_settings import (
            FFT_LENGTH,
            HOP_SAMPLES,
            MEL_BINS,
            WINDOW_SAMPLES,
        )

        n2_count = DFT_SPLIT
        if FFT_LENGTH % n2_count or HOP_SAMPLES % n2_count or CLIP_SAMPLES % n2_count:
            raise NotImplementedError(f"DFT_SPLIT {n2_count} must divide fft, hop and clip length")
        n1_count = FFT_LENGTH // n2_count
        taps = -(-WINDOW_SAMPLES // n2_count)
        k2_count = FFT_LENGTH // 2 // n1_count + 1
        window = np.zeros(taps * n2_count)
        window[:WINDOW_SAMPLES] = hann_window(WINDOW_SAMPLES)
        n1, k1, n2 = np.arange(taps), np.arange(n1_count), np.arange(n2_count)
        phase = (
            2
            * np.pi
            * (np.outer(k1, n1)[None] / n1_count + np.outer(n2, k1)[:, :, None] / FFT_LENGTH)
        )  # [n2, k1, n1]
        taper = window.reshape(taps, n2_count).T[:, None, :]  # [n2, 1, n1]
        stage1 = np.stack([taper * np.cos(phase), -taper * np.sin(phase)], axis=1)
        angle = 2 * np.pi * np.outer(np.arange(k2_count), n2) / n2_count  # [k2, n2]
        stage2 = np.zeros((2, k2_count, n2_count, 2))  # [(re, im) out, k2, n2, (re, im) in]
        stage2[0, :, :, 0], stage2[0, :, :, 1] = np.cos(angle), np.sin(angle)
        stage2[1, :, :, 0], stage2[1, :, :, 1] = -np.sin(angle), np.cos(angle)
        mel = np.zeros((k2_count * n1_count, MEL_BINS))
        mel[: FFT_LENGTH // 2 + 1] = mel_matrix
        return cls(
            n1_count,
            n2_count,
            k2_count,
            taps,
            HOP_SAMPLES // n2_count,
            stage1.reshape(n2_count * 2 * n1_count, 1, taps),
            stage2.reshape(2 * k2_count, 2 * n2_count),
            mel,
        )


def mel_spectrum(
    graph: GraphBuilder, waveform: str, mel_matrix: np.ndarray, batch: int, frames: int
) -> str:
    """waveform [batch, samples] -> mel magnitudes [batch, MEL_BINS, frames] of its STFT frames
    (model.training.features' framing, no padding), as a FactorisedDft. One of `batch` and
    `frames` may be -1 (dynamic): a batch of 1 s clips has FRAMES frames each; a single stream of
    any length (model.export.onnx_stream) is a batch of 1."""
    dft = FactorisedDft.of(mel_matrix)
    n2_count = dft.n2_count
    if frames != -1 and (CLIP_SAMPLES // n2_count - dft.taps) // dft.stride + 1 != frames:
        raise NotImplementedError(f"the factorised framing does not give {frames} frames")
    columns = CLIP_SAMPLES // n2_count if batch == -1 else -1
    shape = graph.ints("shape", batch, columns, n2_count)
    columns_major = graph.op("Reshape", [waveform, shape], "blocks")
    x = graph.op("Transpose", [columns_major], "by_phase", perm=[0, 2, 1])  # [batch, n2, columns]
    x = graph.op(
        "Conv",
        [x, graph.const("dft_stage1", dft.stage1)],
        "dft_stage1",
        group=n2_count,
        kernel_shape=[dft.taps],
        strides=[dft.stride],
    )  # [batch, (n2, ri, k1), frames]
    frame_columns = -1 if frames == -1 else dft.n1_count * frames
    x = graph.op("Reshape", [x, graph.ints("shape", batch, 2 * n2_count, frame_columns)], "stage1")
    x = graph.op(
        "MatMul", [graph.const("dft_stage2", dft.stage2), x], "dft"
    )  # [b, (ri, k2), (k1, f)]
    x = graph.op("Mul", [x, x], "power_parts")
    parts = -1 if frames == -1 else dft.bins * frames
    x = graph.op("Reshape", [x, graph.ints("shape", batch, 2, parts)], "parts")
    real, imag = graph.op("Split", [x], "part", outputs=2, axis=1, num_outputs=2)
    x = graph.op("Sqrt", [graph.op("Add", [real, imag], "power")], "magnitude")
    x = graph.op("Reshape", [x, graph.ints("shape", batch, dft.bins, frames)], "spectrum")
    return graph.op("MatMul", [graph.const("mel_matrix_t", dft.mel.T), x], "mel")  # [b, mel, f]


def gain_of_power(graph: GraphBuilder, mean_power: str, target_rms: float) -> str:
    """target_rms / max(sqrt(mean_power), RMS_FLOOR): the loudness gain of a mean power."""
    from model.training.feature_settings import RMS_FLOOR

    level = graph.op("Sqrt", [mean_power], "rms")
    level = graph.op("Max", [level, graph.const("rms_floor", RMS_FLOOR)], "level")
    return graph.op("Div", [graph.const("target_rms", target_rms), level], "gain")
