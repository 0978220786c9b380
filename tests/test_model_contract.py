"""The shipped model keeps its contract: plain-TF loading, shapes, probabilities, label order."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model.audio import WINDOW_HOP, WindowRun
from model.contract import (
    CLIP_SAMPLES,
    DEFAULT_ARTIFACT,
    INPUT_NAME,
    LABELS,
    METADATA_FILE,
    OUTPUT_NAME,
    SAMPLE_RATE,
    SIGNATURE,
)
from model.decision import Decision
from model.export.artifact import model_version, store_decision
from model.serving import ONNX_FILE, STREAM_FILE, TOLERANCE, KeywordModel
from model.training.architecture import ARCHITECTURES, build_model
from model.training.data import load_read_speech, load_split, silence_windows


def test_metadata_describes_the_artifact():
    metadata = json.loads((DEFAULT_ARTIFACT / METADATA_FILE).read_text())
    assert metadata["labels"] == list(LABELS) == ["yes", "no", "unknown", "silence"]
    assert (metadata["sample_rate"], metadata["clip_samples"]) == (SAMPLE_RATE, CLIP_SAMPLES)
    assert metadata["model_version"] == model_version(DEFAULT_ARTIFACT)
    assert metadata["metrics"]["accuracy"] >= 0.94
    assert metadata["metrics"]["false_keyword_rate"] <= 0.01
    # the test figures were measured with the thresholds the artifact ships
    assert metadata["metrics"]["decision"]["thresholds"] == metadata["decision"]["thresholds"]
    assert (DEFAULT_ARTIFACT / "DATA_LICENSE").read_text().startswith("Attribution 4.0")


def test_serving_signature_is_waveforms_in_probabilities_out():
    signature = tf.saved_model.load(str(DEFAULT_ARTIFACT)).signatures[SIGNATURE]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == [INPUT_NAME]
    assert inputs[INPUT_NAME].shape.as_list() == [None, CLIP_SAMPLES]
    assert inputs[INPUT_NAME].dtype == tf.float32
    outputs = signature.structured_outputs
    assert list(outputs) == [OUTPUT_NAME]
    assert outputs[OUTPUT_NAME].shape.as_list() == [None, len(LABELS)]
    assert outputs[OUTPUT_NAME].dtype == tf.float32


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_outputs_are_probabilities_for_any_batch_size(keyword_model, batch):
    waveforms = np.random.default_rng(batch).uniform(-1, 1, (batch, CLIP_SAMPLES))
    probabilities = keyword_model.predict(waveforms.astype(np.float32))
    assert probabilities.shape == (batch, len(LABELS))
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_window_scores_the_same_alone_or_in_a_batch(keyword_model):
    waveforms = np.random.default_rng(1).normal(0, 0.1, (16, CLIP_SAMPLES)).astype(np.float32)
    together = keyword_model.predict(waveforms)
    alone = np.concatenate([keyword_model.predict(waveforms[i : i + 1]) for i in range(16)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_outputs_follow_the_label_order(keyword_model, data_dir):
    waveforms, labels, _ = load_split(data_dir, "val")
    waveforms = np.concatenate([waveforms, silence_windows(data_dir, "val", 50, seed=1)])
    labels = np.concatenate([labels, np.full(50, LABELS.index("silence"))])
    probabilities = keyword_model.predict(waveforms)
    for index, label in enumerate(LABELS):
        # each class's own column is, on average, its clips' highest score
        mean_scores = probabilities[labels == index].mean(axis=0)
        assert int(np.argmax(mean_scores)) == index, (label, mean_scores)


def test_the_shipped_onnx_model_matches_the_saved_model_on_real_clips(data_dir):
    from model.export.onnx_export import TOLERANCE, check_onnx

    speech, _, _ = load_split(data_dir, "test")
    clips = np.concatenate([speech[:300], silence_windows(data_dir, "test", 40, seed=3)])
    result = check_onnx(DEFAULT_ARTIFACT, clips)
    assert result["max_abs_difference"] <= TOLERANCE
    assert result["argmax_agreement"] == 1.0


def test_the_default_runtime_is_onnx_and_needs_no_tensorflow():
    """Serving from model.onnx must not import TensorFlow: that is most of its start-up gain."""
    code = (
        "import sys; from model.serving import KeywordModel; import numpy as np;"
        "m = KeywordModel(); p = m.predict(np.zeros((2, 16000), np.float32));"
        "print(m.runtime, p.shape, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["onnx", "(2,", "4)", "False"]


def real_speech_run(data_dir, seconds: float = 30.0) -> WindowRun:
    """A run of windows over val read sentences joined end to end, quiet and loud in turn."""
    sentences, _ = load_read_speech(data_dir.parent / "read_speech", "val")
    gains = np.resize([1.0, 0.05, 3.0], len(sentences)).astype(np.float32)
    audio = np.clip(np.concatenate([s * g for s, g in zip(sentences, gains, strict=True)]), -1, 1)
    run = WindowRun(audio[: int(seconds * SAMPLE_RATE)])
    return WindowRun(run.samples[: CLIP_SAMPLES + (run.count - 1) * WINDOW_HOP])


def test_a_run_scores_as_its_windows_with_each_frame_once(keyword_model, data_dir):
    """predict_run (the stream model) against predict on the same windows of real speech."""
    run = real_speech_run(data_dir)
    by_run = keyword_model.predict_run(run.samples)
    assert keyword_model._run_predictor() is not None  # the stream model, not a fallback
    by_window = keyword_model.predict(np.ascontiguousarray(run.windows()))
    assert by_run.shape == (run.count, len(LABELS)) == by_window.shape
    assert np.max(np.abs(by_run - by_window)) <= TOLERANCE


def test_the_shipped_stream_model_is_derived_from_its_model_onnx():
    from model.export.onnx_stream import stream_model_bytes

    model_bytes = (DEFAULT_ARTIFACT / ONNX_FILE).read_bytes()
    assert stream_model_bytes(model_bytes) == (DEFAULT_ARTIFACT / STREAM_FILE).read_bytes()


def test_a_stream_model_that_disagrees_with_model_onnx_is_not_used(data_dir, tmp_path):
    """A stale or altered stream.onnx (here its mel projection scaled) is refused when opened,
    and runs are scored window by window."""
    import onnx
    from onnx import numpy_helper

    artifact = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, artifact)
    stream = onnx.load(artifact / STREAM_FILE)
    for initializer in stream.graph.initializer:
        if "mel_matrix_t" in initializer.name:
            scaled = numpy_helper.to_array(initializer) * 1.5
            initializer.CopyFrom(numpy_helper.from_array(scaled, initializer.name))
    onnx.save(stream, artifact / STREAM_FILE)
    model = KeywordModel(artifact)
    run = real_speech_run(data_dir, seconds=8.0)
    by_run = model.predict_run(run.samples)
    assert model._run_predictor() is None
    np.testing.assert_array_equal(by_run, model.predict(np.ascontiguousarray(run.windows())))


def test_a_run_must_be_whole_windows(keyword_model):
    with pytest.raises(ValueError, match="not a run of windows"):
        keyword_model.predict_run(np.zeros(CLIP_SAMPLES + 100, np.float32))


def network_with_moved_statistics(architecture: str, seed: int):
    """A freshly built network with its batch-norm statistics moved off their defaults, so that
    folding them into the convolutions is exercised."""
    import keras

    model = build_model(architecture)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size))
    return model


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_exports_to_onnx_with_the_same_outputs(architecture, data_dir, tmp_path):
    """Against Keras on real clips."""
    from model.export.onnx_export import TOLERANCE, export_onnx
    from model.serving import onnx_predictor

    model = network_with_moved_statistics(architecture, seed=0)
    speech, _, _ = load_split(data_dir, "val")
    clips = speech[:64]
    temperature = 0.7
    export_onnx([(model, temperature)], tmp_path / "model.onnx")
    expected = tf.nn.softmax(model(clips, training=False) / temperature).numpy()
    actual = onnx_predictor((tmp_path / "model.onnx").read_bytes())(clips)
    assert np.max(np.abs(actual - expected)) <= TOLERANCE


def test_an_ensemble_exports_the_mean_of_its_members(data_dir, tmp_path):
    """SavedModel and ONNX of two different networks, each with its own temperature, against
    the mean of the members' own softmax outputs computed here."""
    import onnx

    from model.export.artifact import export_saved_model
    from model.export.onnx_export import TOLERANCE, write_onnx
    from model.serving import KeywordModel

    members = [
        (network_with_moved_statistics("ds-cnn", seed=1), 0.6),
        (network_with_moved_statistics("ds-cnn-m-ln", seed=2), 1.3),
    ]
    speech, _, _ = load_split(data_dir, "val")
    clips = speech[:32]
    export_saved_model(members, tmp_path, clips)
    write_onnx(tmp_path, members, clips)
    expected = np.mean(
        [tf.nn.softmax(m(clips, training=False) / t).numpy() for m, t in members], axis=0
    )
    (tmp_path / METADATA_FILE).write_text(json.dumps({"labels": list(LABELS)}))
    for runtime in ("tensorflow", "onnx"):
        actual = KeywordModel(tmp_path, runtime).predict(clips)
        assert np.max(np.abs(actual - expected)) <= TOLERANCE, runtime
    single = tf.nn.softmax(members[0][0](clips, training=False) / members[0][1]).numpy()
    assert np.max(np.abs(expected - single)) > 10 * TOLERANCE  # both members count
    graph = onnx.load(tmp_path / "model.onnx").graph
    assert sum("dft_stage1" in node.name for node in graph.node) == 1  # one shared front end
    # The stream model is written with it, and scores runs as model.onnx scores their windows.
    run = real_speech_run(data_dir, seconds=6.0)
    model = KeywordModel(tmp_path)
    by_run = model.predict_run(run.samples)
    assert model._run_predictor() is not None
    by_window = model.predict(np.ascontiguousarray(run.windows()))
    assert np.max(np.abs(by_run - by_window)) <= TOLERANCE


def test_the_model_version_covers_the_weights_model_onnx_and_the_thresholds(tmp_path):
    """Not stream.onnx: the same computation as model.onnx, refused when opened if it is not
    (test_a_stream_model_that_disagrees_with_model_onnx_is_not_used)."""
    artifact = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, artifact)
    shipped = model_version(artifact)
    changed = store_decision(artifact, Decision(yes=0.61, no=0.62).as_metadata())
    assert changed != shipped
    assert json.loads((artifact / METADATA_FILE).read_text())["model_version"] == changed
    assert KeywordModel(artifact).decision == Decision(yes=0.61, no=0.62)
    with open(artifact / ONNX_FILE, "ab") as onnx_file:
        onnx_file.write(b"\0")
    assert model_version(artifact) not in (shipped, changed)
