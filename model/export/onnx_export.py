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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.contract import CLIP_SAMPLES, INPUT_NAME, LABELS, METADATA_FILE, OUTPUT_NAME, SIGNATURE
from model.export.onnx_graph import OPSET, GraphBuilder
from model.export.onnx_layers import Conversion, Layer, converter_for
from model.serving import ONNX_FILE, TOLERANCE, onnx_predictor, saved_model_predictor

if TYPE_CHECKING:
    import keras
    import onnx

    from model.export.artifact import Member


def _keras_graph(model: keras.Model) -> list[tuple[Any, list, list]]:
    """(operation, input tensors, output tensors) of the functional model, inputs first."""
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            steps.append((node.operation, list(node.input_tensors), list(node.output_tensors)))
    return steps


def build_onnx(keras_model: keras.Model, temperature: float) -> onnx.ModelProto:
    """The ONNX model (waveform -> probabilities) of keras_model (waveform -> logits): each
    layer converted by its model.export.onnx_layers converter, then softmax."""
    import keras

    steps = _keras_graph(keras_model)
    consumers: dict[int, list] = {}
    for operation, inputs, _ in steps:
        for tensor in inputs:
            consumers.setdefault(id(tensor), []).append(operation)
    output_tensor = keras_model.outputs[0]
    conversion = Conversion(GraphBuilder(), temperature, output_tensor, consumers)
    for operation, inputs, outputs in steps:
        if isinstance(operation, keras.layers.InputLayer):
            conversion.names[id(outputs[0])] = INPUT_NAME
            continue
        layer = Layer(operation, inputs, outputs[0], conversion.names[id(inputs[0])])
        conversion.names[id(outputs[0])] = converter_for(operation)(conversion, layer)
    logits = conversion.names[id(output_tensor)]
    return _assemble(conversion.graph, logits, keras_model.name, temperature)


def _assemble(graph: GraphBuilder, logits: str, name: str, temperature: float) -> onnx.ModelProto:
    """The checked ONNX model of a converted graph: softmax of its logits, the model's input and
    output declared, its labels and temperature in its properties."""
    from onnx import TensorProto, checker, helper

    graph.nodes.append(
        helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=-1, name="softmax")
    )
    onnx_graph = helper.make_graph(
        graph.nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", CLIP_SAMPLES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(LABELS)])],
        graph.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="yesno-label model/export/onnx_export.py",
        doc_string=f"{name}: {INPUT_NAME} float32 [batch, {CLIP_SAMPLES}] -> "
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
    """A Keras model with the weights of an exported one-network SavedModel
    (rebuild_keras_models)."""
    return rebuild_keras_models(saved_model_dir, [architecture])[0]


def rebuild_keras_models(
    saved_model_dir: str | Path, architectures: list[str]
) -> list[keras.Model]:
    """Keras models with the weights of an exported SavedModel of one network or an ensemble,
    one per architecture in the order of its members.

    Keras 3 cannot reload the SavedModel, so each architecture is rebuilt with
    `model.training.architecture.build_model`. The serving signature lists its variables member
    after member; each member's are assigned by name (`conv/kernel:0` -> `conv/kernel`), and
    the names and shapes must match exactly.
    """
    import tensorflow as tf

    from model.training.architecture import build_model

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep alive: the signature holds weak refs
    saved = list(loaded.signatures[SIGNATURE].variables)
    models = [build_model(architecture) for architecture in architectures]
    if len(saved) != sum(len(model.weights) for model in models):
        raise ValueError(f"{len(saved)} saved variables are not those of {architectures}")
    for model in models:
        member, saved = saved[: len(model.weights)], saved[len(model.weights) :]
        assign_by_name(model, {variable.name.removesuffix(":0"): variable for variable in member})
    return models


def assign_by_name(model: keras.Model, values: dict) -> None:
    """Give each weight of `model` the value of the same name in `values` (arrays or
    variables), which must hold exactly its weights, of the same shapes."""
    weights = {weight.path: weight for weight in model.weights}
    if set(values) != set(weights):
        raise ValueError(
            f"variables differ: only saved {sorted(set(values) - set(weights))}, "
            f"only rebuilt {sorted(set(weights) - set(values))}"
        )
    for name, weight in weights.items():
        value = np.asarray(values[name])
        if tuple(weight.shape) != value.shape:
            raise ValueError(f"{name}: saved {value.shape} != rebuilt {weight.shape}")
        weight.assign(value)


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
