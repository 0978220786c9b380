"""Score a run of overlapping windows from the run's samples, computing each STFT frame once.

The pipeline scores a recording in 1 s windows every 0.5 s (model.audio.WINDOW_HOP), so every
STFT frame of model.onnx's front end belongs to two windows and is computed twice. The stream
model `stream.onnx`, derived from an artifact's model.onnx (at export, or by this module's
command for an artifact exported before), takes the samples of a run of such windows,
`samples` float32 [1, CLIP_SAMPLES + WINDOW_HOP * (n - 1)], computes the mel spectrum of the
whole run once, gathers each window's FRAMES frames (and, for a loudness-normalised member,
each window's level from the power of its two halves), and feeds them to the unchanged
networks: `probabilities` float32 [n, 4], window i starting at sample WINDOW_HOP * i.

It is the same computation in another order (each window's frames lie on the run's 20 ms frame
grid, as WINDOW_HOP is a whole number of hops), so the model version, which covers model.onnx,
does not cover it: `model.serving.KeywordModel.predict_run` checks it against model.onnx when it
opens it and uses it only if they agree to model.serving.TOLERANCE, and scores window by window
otherwise (or when an artifact has none). It is written here, not at load time, because
importing the `onnx` package takes longer than scoring a minute of audio.

Command: `python -m model.export.onnx_stream model/artifacts/yesno`
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.audio import WINDOW_HOP
from model.contract import CLIP_SAMPLES, INPUT_NAME, LABELS, OUTPUT_NAME
from model.export.onnx_graph import GraphBuilder, gain_of_power, mel_spectrum
from model.serving import ONNX_FILE, STREAM_FILE, STREAM_INPUT

if TYPE_CHECKING:
    import onnx

PREFIX = "stream/"
# Hints of the initializers that model.export.onnx_export names: the mel projection (transposed) and
# the numerator of a loudness-normalisation gain.
MEL_MATRIX_HINT = "mel_matrix_t"
TARGET_RMS_HINT = "target_rms"


def stream_model_bytes(model_bytes: bytes) -> bytes | None:
    """The stream model of a model.onnx written by model.export.onnx_export, or None when its front
    end is not one this module recognises."""
    import onnx
    from onnx import TensorProto, checker, helper

    from model.training.feature_settings import FFT_LENGTH, HOP_SAMPLES

    if WINDOW_HOP % HOP_SAMPLES or CLIP_SAMPLES != 2 * WINDOW_HOP:
        return None
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {initializer.name: initializer for initializer in graph.initializer}
    mel_nodes = _nodes_reading(graph, "MatMul", MEL_MATRIX_HINT, initializers)
    gain_nodes = _nodes_reading(graph, "Div", TARGET_RMS_HINT, initializers)
    if len(mel_nodes) != 1:
        return None  # every member shares one front end in a graph made by model.export.onnx_export

    front_end = GraphBuilder()
    mel_t = onnx.numpy_helper.to_array(initializers[mel_nodes[0].input[0]])  # [mel, bins]
    mel_matrix = mel_t.T[: FFT_LENGTH // 2 + 1].astype(np.float64)
    produced = {mel_nodes[0].output[0]: _window_mel(front_end, mel_matrix)}
    for node in gain_nodes:
        target = float(onnx.numpy_helper.to_array(initializers[node.input[0]]))
        produced[node.output[0]] = _window_gain(front_end, target)
    nodes = _prefixed(front_end.nodes)
    nodes += [
        helper.make_node("Identity", [PREFIX + source], [name], name=f"{PREFIX}{name}")
        for name, source in produced.items()
    ]
    kept = _needed(graph.node, OUTPUT_NAME, set(produced))
    if any(INPUT_NAME in node.input for node in kept):
        return None  # something else still reads the waveform: not a front end made here
    nodes += kept
    used = {name for node in nodes for name in node.input}
    stream_initializers = [
        *(
            _renamed(initializer, PREFIX + initializer.name)
            for initializer in front_end.initializers
        ),
        *(initializer for initializer in graph.initializer if initializer.name in used),
    ]
    stream_graph = helper.make_graph(
        nodes,
        f"{graph.name} (stream)",
        [helper.make_tensor_value_info(STREAM_INPUT, TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["windows", len(LABELS)])],
        stream_initializers,
    )
    stream = helper.make_model(
        stream_graph,
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
        producer_name="yesno-label model/export/onnx_stream.py",
        doc_string=f"{STREAM_INPUT} float32 [1, {CLIP_SAMPLES} + {WINDOW_HOP} * (n - 1)] -> "
        f"{OUTPUT_NAME} float32 [n, {len(LABELS)}] of the windows every {WINDOW_HOP} samples",
    )
    checker.check_model(stream, full_check=True)
    return stream.SerializeToString()


def write_stream_onnx(artifact_dir: str | Path) -> str | None:
    """Write the stream model of artifact_dir's model.onnx next to it; returns its file name, or
    None (and removes a stale one) when model.onnx is not one this module recognises."""
    path = Path(artifact_dir) / STREAM_FILE
    stream = stream_model_bytes((Path(artifact_dir) / ONNX_FILE).read_bytes())
    if stream is None:
        path.unlink(missing_ok=True)
        return None
    path.write_bytes(stream)
    return STREAM_FILE


def _window_mel(graph: GraphBuilder, mel_matrix: np.ndarray) -> str:
    """The mel spectrum of each window, [n, MEL_BINS, FRAMES], gathered from the run's."""
    from model.training.feature_settings import FRAMES, HOP_SAMPLES

    hop_frames = WINDOW_HOP // HOP_SAMPLES
    run_mel = mel_spectrum(graph, STREAM_INPUT, mel_matrix, 1, -1)  # [1, mel, run frames]
    run_frames = graph.op(
        "Gather",
        [graph.op("Shape", [run_mel], "run_shape"), graph.ints("frame_axis", 2)],
        "run_frames",
    )  # [1]
    spare = graph.op("Sub", [run_frames, graph.ints("frames", FRAMES)], "spare_frames")
    count = graph.op(
        "Add",
        [graph.op("Div", [spare, graph.ints("hop", hop_frames)], "last"), graph.ints("one", 1)],
        "windows_1d",
    )
    starts = graph.op(
        "Range",
        [
            graph.const("zero", 0, np.int64),
            graph.op("Squeeze", [count], "windows"),
            graph.const("step", 1, np.int64),
        ],
        "window_index",
    )
    first = graph.op(
        "Mul", [starts, graph.const("hop_frames", hop_frames, np.int64)], "first_frame"
    )
    indices = graph.op(
        "Add",
        [
            graph.op("Unsqueeze", [first, graph.ints("axis", 1)], "first_frames"),
            graph.const("frame_offsets", np.arange(FRAMES)[None], np.int64),
        ],
        "frame_indices",
    )  # [n, FRAMES]
    mel = graph.op("Squeeze", [run_mel, graph.ints("axis", 0)], "run_mel")  # [mel, run frames]
    gathered = graph.op("Gather", [mel, indices], "gathered", axis=1)  # [mel, n, FRAMES]
    return graph.op("Transpose", [gathered], "window_mel", perm=[1, 0, 2])


def _window_gain(graph: GraphBuilder, target_rms: float) -> str:
    """model.export.onnx_export._loudness_gain of each window, [n, 1], from the power of its
    halves."""
    halves = graph.op("Reshape", [STREAM_INPUT, graph.ints("shape", -1, WINDOW_HOP)], "halves")
    square = graph.op("Mul", [halves, halves], "square")
    half_power = graph.op("ReduceSum", [square, graph.ints("axes", 1)], "half_power", keepdims=0)
    earlier = graph.op(
        "Slice", [half_power, graph.ints("start", 0), graph.ints("end", -1)], "earlier"
    )
    later = graph.op(
        "Slice", [half_power, graph.ints("start", 1), graph.ints("end", 2**62)], "later"
    )
    power = graph.op("Add", [earlier, later], "window_power")
    mean_power = graph.op("Div", [power, graph.const("samples", CLIP_SAMPLES)], "mean_power")
    gain = gain_of_power(graph, mean_power, target_rms)
    return graph.op("Unsqueeze", [gain, graph.ints("axis", 1)], "window_gain")


def _nodes_reading(graph: onnx.GraphProto, op_type: str, hint: str, initializers: dict) -> list:
    """The op_type nodes whose first input is an initializer that onnx_export named with hint."""
    return [
        node
        for node in graph.node
        if node.op_type == op_type
        and node.input[0] in initializers
        and node.input[0].rsplit("/", 1)[-1].startswith(f"{hint}_")
    ]


def _needed(nodes, output: str, given: set[str]) -> list:
    """The nodes, in order, that `output` depends on, not counting what computes `given`."""
    producer = {name: node for node in nodes for name in node.output}
    wanted, stack = set(), [output]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in given or node is None or id(node) in wanted:
            continue
        wanted.add(id(node))
        stack.extend(node.input)
    return [node for node in nodes if id(node) in wanted]


def _prefixed(nodes: list) -> list:
    """Copies of the builder's nodes with its tensor and initializer names prefixed (all but
    the stream input), so they cannot clash with model.onnx's."""
    copies = []
    for node in nodes:
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = PREFIX + node.name
        for field in (copy.input, copy.output):
            for index, name in enumerate(field):
                if name and name != STREAM_INPUT:
                    field[index] = PREFIX + name
        copies.append(copy)
    return copies


def _renamed(initializer, name: str):
    copy = type(initializer)()
    copy.CopyFrom(initializer)
    copy.name = name
    return copy


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Add stream.onnx to an artifact with model.onnx.")
    parser.add_argument("artifact", type=Path)
    args = parser.parse_args()
    written = write_stream_onnx(args.artifact)
    print(f"{args.artifact / written}" if written else "model.onnx not recognised: none written")


if __name__ == "__main__":
    main()
