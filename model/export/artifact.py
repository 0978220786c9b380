"""Write the trained model as a plain-TensorFlow SavedModel plus metadata.json and the data licence.

Keras 3 cannot reload SavedModels, so the artifact is a `tf.Module` with one explicit serving
signature; consumers need only `tf.saved_model.load` (see model/serving.py).
"""

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model.contract import (
    CLIP_SAMPLES,
    INPUT_NAME,
    LABELS,
    METADATA_FILE,
    OUTPUT_NAME,
    SAMPLE_RATE,
    SIGNATURE,
)
from model.serving import ONNX_FILE, STREAM_FILE, TOLERANCE
from model.verifier import VERIFIER_DIR, verifier_files

LICENSE_FILE = "LICENSE"
DATA_LICENSE_FILE = "DATA_LICENSE"
# The only entries an artifact directory may hold; anything else means --out points elsewhere.
ARTIFACT_ENTRIES = {
    "saved_model.pb",
    "fingerprint.pb",
    "variables",
    "assets",
    ONNX_FILE,
    STREAM_FILE,
    METADATA_FILE,
    DATA_LICENSE_FILE,
    VERIFIER_DIR,
}


# A trained network (waveform -> logits) and the softmax temperature fitted for it on val.
Member = tuple[keras.Model, float]


def calibrated_probabilities(members: list[Member], waveforms) -> tf.Tensor:
    """The mean over members of softmax(logits / temperature): one member is just its own."""
    return tf.reduce_mean(
        tf.stack(
            [
                tf.nn.softmax(model(waveforms, training=False) / temperature)
                for model, temperature in members
            ]
        ),
        axis=0,
    )


class ServingModule(tf.Module):
    """Waveforms in, calibrated probabilities out (calibrated_probabilities), under the names
    fixed in model/contract.py."""

    def __init__(self, members: list[Member]):
        super().__init__()
        self.models = [model for model, _ in members]
        self.temperatures = [tf.constant(temperature, tf.float32) for _, temperature in members]

    @tf.function(input_signature=[tf.TensorSpec([None, CLIP_SAMPLES], tf.float32, name=INPUT_NAME)])
    def serve(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        members = list(zip(self.models, self.temperatures, strict=True))
        return {OUTPUT_NAME: calibrated_probabilities(members, waveform)}


def clear_artifact_dir(out_dir: Path) -> None:
    """Empty a previous artifact directory, refusing to delete a directory that is not one."""
    if not out_dir.exists():
        return
    unexpected = {entry.name for entry in out_dir.iterdir()} - ARTIFACT_ENTRIES
    if unexpected:
        raise FileExistsError(f"{out_dir} holds non-artifact files {sorted(unexpected)}")
    shutil.rmtree(out_dir)


def model_version(out_dir: Path) -> str:
    """Content hash of what serving reads: sha256 over saved_model.pb, the variables files,
    model.onnx and the verifier's files (in sorted relative-path order), then the keyword
    thresholds, the context rule, and the verifier's head weight and candidate floor (where it
    names one) stored in metadata.json. The rest of metadata.json is excluded, so adding
    metrics keeps it, and so is stream.onnx, model.onnx's computation in another order,
    refused when opened unless it gives model.onnx's probabilities
    (model.serving.stream_predictor)."""
    files = [
        out_dir / "saved_model.pb",
        *(out_dir / "variables").rglob("*"),
        out_dir / ONNX_FILE,
        *verifier_files(out_dir),
    ]
    digest = hashlib.sha256()
    for path in sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(out_dir)):
        digest.update(path.read_bytes())
    metadata_path = out_dir / METADATA_FILE
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    decision = metadata.get("decision", {})
    thresholds = decision.get("thresholds")  # None: the default decision
    digest.update(json.dumps(thresholds, sort_keys=True).encode())
    if "context" in decision:
        digest.update(json.dumps(decision["context"], sort_keys=True).encode())
    if "verifier" in metadata:
        digest.update(json.dumps(metadata["verifier"]["head_weight"]).encode())
        if "candidate_floor" in metadata["verifier"]:
            digest.update(json.dumps(metadata["verifier"]["candidate_floor"]).encode())
    return "sha256:" + digest.hexdigest()[:16]


def store_verifier(out_dir: Path, verifier: dict) -> str:
    """Describe the verifier written into out_dir/verifier/ in metadata.json and update the
    model version it changes; returns the new version."""
    return store_versioned(out_dir, "verifier", verifier)


def store_decision(out_dir: Path, decision: dict) -> str:
    """Put the keyword decision into metadata.json and the model version it changes; returns
    the new version."""
    return store_versioned(out_dir, "decision", decision)


def store_versioned(out_dir: Path, field: str, value: dict) -> str:
    """Put a field that the model version covers into metadata.json, then the new version;
    returns it."""
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    metadata[field] = value
    write_metadata(out_dir, metadata)
    metadata["model_version"] = model_version(out_dir)
    write_metadata(out_dir, metadata)
    return metadata["model_version"]


def export_saved_model(members: list[Member], out_dir: Path, check_waveforms: np.ndarray) -> float:
    """Save the serving SavedModel of one model or an ensemble to out_dir, reload it with plain
    TensorFlow and check it reproduces the Keras models on check_waveforms. Returns the largest
    probability difference."""
    clear_artifact_dir(out_dir)
    module = ServingModule(members)
    tf.saved_model.save(module, str(out_dir), signatures={SIGNATURE: module.serve})
    signature = tf.saved_model.load(str(out_dir)).signatures[SIGNATURE]
    reloaded = signature(**{INPUT_NAME: tf.constant(check_waveforms)})[OUTPUT_NAME].numpy()
    expected = calibrated_probabilities(members, tf.constant(check_waveforms)).numpy()
    difference = float(np.max(np.abs(reloaded - expected)))
    if difference > TOLERANCE:
        raise RuntimeError(f"reloaded SavedModel differs from the Keras model by {difference}")
    return difference


def artifact_metadata(out_dir: Path, **fields) -> dict:
    """metadata.json of the artifact in out_dir: the contract (labels, rate, clip length) and the
    model version every artifact starts with, then `fields`."""
    return {
        "labels": list(LABELS),
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "clip_seconds": CLIP_SAMPLES / SAMPLE_RATE,
        "model_version": model_version(out_dir),
        **fields,
    }


def write_metadata(out_dir: Path, metadata: dict) -> None:
    """metadata.json, pretty-printed so that diffs between versions are readable."""
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def copy_data_license(data_dir: Path, out_dir: Path) -> None:
    """The dataset is CC BY 4.0: its attribution has to travel with the derived model."""
    shutil.copyfile(data_dir / LICENSE_FILE, out_dir / DATA_LICENSE_FILE)
