"""Train the verifier's head (model.verifier) and put the verifier into an artifact.

`python -m model.training.train_verifier --artifact DIR [--embedding-models DIR] [--data DIR]
[--read-speech DIR] [--seed 0] [--candidate-floor P]`, or `--copy-from ARTIFACT
[--candidate-floor P]` to reuse a trained verifier, or `--tune-embedding EPOCHS [--head-weight W]`
to fine-tune a trained one

The speech embedding is frozen; only the head learns, from the train split: every clip clean,
AUGMENTED_PASSES copies of each shifted, with changed gain and with train background noise on
most, SILENCE_WINDOWS silence windows of the train noise, NON_SPEECH_WINDOWS non-speech sounds
(hiss with tones and noise bursts from the train split's own bank, model.training.train's) as
`silence`, and READ_SPEECH_WINDOWS windows of the train read sentences as `unknown` (running
speech, where a keyword-like syllable must not pass). The epoch with the lowest val loss is
kept. `--embedding-models` is a folder with openWakeWord 0.5.1's `melspectrogram.onnx` and
`embedding_model.onnx` (its wheel's `openwakeword/resources/models/`, with `pip download
--no-deps openwakeword==0.5.1`); by default those of the artifact's own verifier. Then choose
the decision again on val (`python -m model.evaluation.thresholds --artifact DIR --write`): the
verifier changes the probabilities the thresholds apply to. `--candidate-floor`: the verifier
re-hears the windows whose likelier keyword has this probability or more (default
REHEAR_FLOOR); lower finds more keywords the networks doubt, at the verifier's cost on more
windows.

`--tune-embedding EPOCHS` then fine-tunes the artifact's verifier: its embedding model and head
learn together from the same examples (model.training.embedding_tuning), the epoch with the
lowest val loss is kept, and the tuned `embedding_model.onnx` and head replace the frozen ones.
`--head-weight`: the tuned head's weight in the fusion (chosen on val).
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from model.contract import DEFAULT_ARTIFACT, LABELS, METADATA_FILE
from model.evaluation.eval_sets import sound_clips
from model.evaluation.evaluate import DEFAULT_DATA, load_eval_set
from model.training.data import (
    DEFAULT_READ_SPEECH,
    load_noise,
    load_read_speech,
    load_split,
    make_silence,
    rms,
    speech_windows,
    time_shift,
)
from model.training.train import TRAIN_SOUND_BANK
from model.verifier import (
    EMBEDDING_FILE,
    HEAD_FILE,
    HEAD_HIDDEN_DROPOUT,
    HEAD_INPUT_DROPOUT,
    HEAD_WEIGHT,
    LICENSE_FILE,
    MEL_FILE,
    NOTICE_FILE,
    REHEAR_FLOOR,
    SLIDING_FILE,
    VERIFIER_DIR,
    Head,
    SpeechEmbedding,
    head_features,
    sliding_embedding_model,
)

AUGMENTED_PASSES = 3
SILENCE_WINDOWS = 1_000
NON_SPEECH_WINDOWS = 2_000
READ_SPEECH_WINDOWS = 2_000
SHIFT_SAMPLES = 1_600  # 100 ms either way
GAIN_DB = (-6.0, 6.0)
NOISE_PROBABILITY = 0.8
NOISE_SNR_DB = (5.0, 30.0)
EMBEDDING_BATCH = 64
HIDDEN = (256, 128)
DROPOUT = (HEAD_INPUT_DROPOUT, *(HEAD_HIDDEN_DROPOUT for _ in HIDDEN))
EPOCHS = 60
PATIENCE = 6
SOURCE = (
    "openWakeWord 0.5.1 (Apache-2.0): melspectrogram.onnx and embedding_model.onnx, its ONNX"
    " form of Google's speech_embedding (Apache-2.0); none of openWakeWord's wake-word models"
)

TUNING_NOTICE = (
    f"{EMBEDDING_FILE} and {SLIDING_FILE} are openWakeWord 0.5.1's {EMBEDDING_FILE} (Apache-2.0,"
    f" see {LICENSE_FILE}) with changed weights: its convolutions were fine-tuned on the Speech"
    " Commands train split together with the head (model.training.embedding_tuning). Its graph"
    f" is unchanged; {MEL_FILE} is unchanged.\n"
)


def augment(
    clips: np.ndarray, noise_segments: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Each clip shifted up to 100 ms, its gain changed, and most mixed with a window of the
    train noise at 5-30 dB SNR."""
    shifted = time_shift(clips, rng, SHIFT_SAMPLES)
    shifted *= (10 ** (rng.uniform(*GAIN_DB, len(clips)) / 20)).astype(np.float32)[:, None]
    noisy = np.flatnonzero(rng.random(len(clips)) < NOISE_PROBABILITY)
    for index in noisy:
        segment = noise_segments[rng.integers(len(noise_segments))]
        start = rng.integers(len(segment) - clips.shape[1] + 1)
        noise = segment[start : start + clips.shape[1]]
        snr = 10 ** (rng.uniform(*NOISE_SNR_DB) / 20)
        level = rms(shifted[index])[0] / (max(float(rms(noise)[0]), 1e-8) * snr)
        shifted[index] += noise * level
    return np.clip(shifted, -1.0, 1.0).astype(np.float32)


def training_examples(
    data_dir: Path, read_speech_dir: Path, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The head's training waveforms [n, 16000] and labels (indices of LABELS)."""
    clips, labels, _ = load_split(data_dir, "train")
    noise = load_noise(data_dir, "train")
    sentences = load_read_speech(read_speech_dir, "train")[0]
    waveforms = [clips, *(augment(clips, noise, rng) for _ in range(AUGMENTED_PASSES))]
    waveforms += [make_silence(noise, SILENCE_WINDOWS, rng)]
    waveforms += [sound_clips(rng, NON_SPEECH_WINDOWS, TRAIN_SOUND_BANK)]
    waveforms += [speech_windows(sentences, READ_SPEECH_WINDOWS, rng)]
    targets = [labels] * (1 + AUGMENTED_PASSES)
    targets += [np.full(SILENCE_WINDOWS + NON_SPEECH_WINDOWS, LABELS.index("silence"))]
    targets += [np.full(READ_SPEECH_WINDOWS, LABELS.index("unknown"))]
    return np.concatenate(waveforms), np.concatenate(targets)


def embed(embedding: SpeechEmbedding, waveforms: np.ndarray) -> np.ndarray:
    """head_features of every waveform, EMBEDDING_BATCH at a time."""
    return np.concatenate(
        [
            head_features(embedding(waveforms[start : start + EMBEDDING_BATCH]))
            for start in range(0, len(waveforms), EMBEDDING_BATCH)
        ]
    )


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    seed: int,
) -> tuple[Head, dict]:
    """The head trained on standardised features, kept at its lowest val loss; and how it went."""
    import keras

    keras.utils.set_random_seed(seed)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    layers = [keras.Input((features.shape[1],)), keras.layers.Dropout(DROPOUT[0])]
    for width, dropout in zip(HIDDEN, DROPOUT[1:], strict=True):
        layers += [keras.layers.Dense(width, activation="relu"), keras.layers.Dropout(dropout)]
    network = keras.Sequential([*layers, keras.layers.Dense(len(LABELS), activation="softmax")])
    network.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    stop = keras.callbacks.EarlyStopping(patience=PATIENCE, restore_best_weights=True)
    history = network.fit(
        (features - mean) / scale,
        labels,
        batch_size=256,
        epochs=EPOCHS,
        verbose=0,
        validation_data=((val_features - mean) / scale, val_labels),
        callbacks=[stop],
    ).history
    dense = [layer for layer in network.layers if isinstance(layer, keras.layers.Dense)]
    head = Head(mean, scale, tuple(tuple(layer.get_weights()) for layer in dense))
    best = int(np.argmin(history["val_loss"]))
    return head, {"epochs_run": len(history["val_loss"]), "kept_epoch": best + 1}


def write_verifier_files(directory: Path, models_dir: Path, head: Head) -> None:
    """The verifier's files in `directory`: openWakeWord's two models (and their licence, and
    the notice of a tuned embedding) from `models_dir`, the head, and the sliding form of the
    embedding model (model.verifier)."""
    directory.mkdir(exist_ok=True)
    if models_dir.resolve() != directory.resolve():
        for name in (MEL_FILE, EMBEDDING_FILE):
            shutil.copyfile(models_dir / name, directory / name)
        (directory / NOTICE_FILE).unlink(missing_ok=True)
        for name in (LICENSE_FILE, NOTICE_FILE):
            if (models_dir / name).is_file():
                shutil.copyfile(models_dir / name, directory / name)
    np.savez(directory / HEAD_FILE, **head.as_arrays())
    embedding_bytes = (directory / EMBEDDING_FILE).read_bytes()
    (directory / SLIDING_FILE).write_bytes(sliding_embedding_model(embedding_bytes))


def add_verifier(
    artifact_dir: Path,
    models_dir: Path,
    data_dir: Path,
    read_speech_dir: Path,
    seed: int = 0,
    candidate_floor: float = REHEAR_FLOOR,
) -> str:
    """Train the head and write the verifier into artifact_dir; returns the new model version."""
    from model.export.artifact import store_verifier  # imports TensorFlow

    started = time.monotonic()
    embedding = SpeechEmbedding(
        (models_dir / MEL_FILE).read_bytes(), (models_dir / EMBEDDING_FILE).read_bytes(), 2
    )
    waveforms, labels = training_examples(data_dir, read_speech_dir, np.random.default_rng(seed))
    val_waveforms, val_labels, _ = load_eval_set(data_dir, "val")
    features, val_features = embed(embedding, waveforms), embed(embedding, val_waveforms)
    print(f"{len(features)} training examples embedded in {time.monotonic() - started:.0f}s")
    head, fitting = fit_head(features, labels, val_features, val_labels, seed)
    val_accuracy = float(np.mean(head.probabilities(val_features).argmax(axis=1) == val_labels))
    directory = artifact_dir / VERIFIER_DIR
    write_verifier_files(directory, models_dir, head)
    version = store_verifier(
        artifact_dir,
        {
            "source": SOURCE,
            "head_weight": HEAD_WEIGHT,
            **candidate_rule(candidate_floor),
            "head": {
                "input": "mean and max of the clip's six embeddings (96 each), standardised",
                "hidden": list(HIDDEN),
                "dropout": list(DROPOUT),
                "examples": {
                    "train_clips": (
                        len(waveforms) - SILENCE_WINDOWS - NON_SPEECH_WINDOWS - READ_SPEECH_WINDOWS
                    )
                    // (1 + AUGMENTED_PASSES),
                    "augmented_passes": AUGMENTED_PASSES,
                    "silence_windows": SILENCE_WINDOWS,
                    "non_speech_windows": NON_SPEECH_WINDOWS,
                    "read_speech_windows": READ_SPEECH_WINDOWS,
                },
                "seed": seed,
                **fitting,
                "val_accuracy": val_accuracy,
            },
            "wall_seconds": round(time.monotonic() - started, 1),
        },
    )
    print(f"verifier written to {directory}; head val accuracy {val_accuracy:.4f}; {version}")
    return version


def mel_frames(embedding: SpeechEmbedding, waveforms: np.ndarray) -> np.ndarray:
    """SpeechEmbedding.mel_frames of every waveform, a thousand at a time (memory)."""
    return np.concatenate(
        [
            embedding.mel_frames(waveforms[start : start + 1_000])
            for start in range(0, len(waveforms), 1_000)
        ]
    )


def tune_verifier(
    artifact_dir: Path,
    data_dir: Path,
    read_speech_dir: Path,
    epochs: int,
    seed: int = 0,
    head_weight: float | None = None,
) -> str:
    """Fine-tune the embedding model of artifact_dir's verifier together with its head on the
    head's training examples (model.training.embedding_tuning), write both back and describe
    them; returns the new model version. `head_weight`: the fusion's (None: as it was)."""
    from model.export.artifact import store_verifier  # imports TensorFlow
    from model.training.checkpoint import checkpoint_dir
    from model.training.embedding_tuning import tune

    described = json.loads((artifact_dir / METADATA_FILE).read_text())["verifier"]
    if "embedding_tuning" in described:
        raise ValueError(f"{artifact_dir}: its verifier's embedding is tuned already")
    directory = artifact_dir / VERIFIER_DIR
    mel_bytes = (directory / MEL_FILE).read_bytes()
    embedding_bytes = (directory / EMBEDDING_FILE).read_bytes()
    embedding = SpeechEmbedding(mel_bytes, embedding_bytes, 2)
    with np.load(directory / HEAD_FILE) as stored:
        head = Head.from_npz(stored)
    waveforms, labels = training_examples(data_dir, read_speech_dir, np.random.default_rng(seed))
    val_waveforms, val_labels, _ = load_eval_set(data_dir, "val")
    frames, val_frames = mel_frames(embedding, waveforms), mel_frames(embedding, val_waveforms)
    del waveforms
    tuned_bytes, tuned_head, fitting = tune(
        embedding_bytes,
        head,
        frames,
        labels,
        val_frames,
        val_labels,
        epochs,
        seed,
        checkpoint_dir(artifact_dir),
    )
    (directory / EMBEDDING_FILE).write_bytes(tuned_bytes)
    np.savez(directory / HEAD_FILE, **tuned_head.as_arrays())
    (directory / SLIDING_FILE).write_bytes(sliding_embedding_model(tuned_bytes))
    (directory / NOTICE_FILE).write_text(TUNING_NOTICE)
    tuned = SpeechEmbedding(mel_bytes, tuned_bytes, 2)
    val_accuracy = float(
        np.mean(tuned_head.probabilities(embed(tuned, val_waveforms)).argmax(axis=1) == val_labels)
    )
    version = store_verifier(
        artifact_dir,
        described
        | {
            "source": SOURCE + "; embedding_model.onnx fine-tuned on the train split with the head",
            "head_weight": described["head_weight"] if head_weight is None else head_weight,
            "embedding_tuning": {**fitting, "seed": seed, "val_accuracy": val_accuracy},
        },
    )
    print(f"verifier of {artifact_dir} tuned; head val accuracy {val_accuracy:.4f}; {version}")
    return version


def candidate_rule(floor: float) -> dict:
    """metadata.json `verifier` fields saying which windows the verifier re-hears, and how."""
    return {
        "candidate_floor": floor,
        "fusion": f"on keyword candidates (likelier keyword >= {floor}): the geometric mean of"
        " the networks' and the head's probabilities, the head's weighted head_weight,"
        " renormalised",
    }


def copy_verifier(source_dir: Path, artifact_dir: Path, candidate_floor: float | None) -> str:
    """Put the verifier of the artifact source_dir (its files and description) into
    artifact_dir: the head hears the audio, not the networks' output, so it serves any networks
    of the same contract. `candidate_floor`: re-hear from this floor (None: source_dir's).
    Returns the new model version."""
    from model.export.artifact import store_verifier  # imports TensorFlow

    shutil.copytree(source_dir / VERIFIER_DIR, artifact_dir / VERIFIER_DIR, dirs_exist_ok=True)
    described = json.loads((source_dir / METADATA_FILE).read_text())["verifier"]
    if candidate_floor is not None:
        described |= candidate_rule(candidate_floor)
    version = store_verifier(artifact_dir, described)
    print(f"verifier of {source_dir} copied to {artifact_dir}; {version}")
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument(
        "--embedding-models",
        type=Path,
        help=f"folder holding {MEL_FILE} and {EMBEDDING_FILE} (and the licence as"
        f" {LICENSE_FILE}); default: the artifact's own {VERIFIER_DIR}/",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--read-speech", type=Path, default=DEFAULT_READ_SPEECH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copy-from",
        type=Path,
        metavar="ARTIFACT",
        help="instead of training, copy this artifact's trained verifier",
    )
    parser.add_argument(
        "--candidate-floor",
        type=float,
        help="re-hear the windows whose likelier keyword has this probability or more"
        f" (default: {REHEAR_FLOOR}; with --copy-from, that artifact's floor)",
    )
    parser.add_argument(
        "--tune-embedding",
        type=int,
        metavar="EPOCHS",
        help="instead of training a head, fine-tune the artifact's verifier (its embedding model"
        " and head together) for this many epochs, keeping the epoch of lowest val loss",
    )
    parser.add_argument(
        "--head-weight", type=float, help="with --tune-embedding: the head's weight in the fusion"
    )
    args = parser.parse_args()
    if args.head_weight is not None and args.tune_embedding is None:
        parser.error("--head-weight sets the weight of a tuned head: give it with --tune-embedding")
    if args.tune_embedding is not None:
        tune_verifier(
            args.artifact,
            args.data,
            args.read_speech,
            args.tune_embedding,
            args.seed,
            args.head_weight,
        )
        return
    if args.copy_from:
        copy_verifier(args.copy_from, args.artifact, args.candidate_floor)
        return
    models_dir = args.embedding_models or args.artifact / VERIFIER_DIR
    floor = REHEAR_FLOOR if args.candidate_floor is None else args.candidate_floor
    add_verifier(args.artifact, models_dir, args.data, args.read_speech, args.seed, floor)


if __name__ == "__main__":
    main()
