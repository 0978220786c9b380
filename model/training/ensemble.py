"""Train the shipped model, an ensemble of two networks, in one command; or combine trained ones.

`python -m model.training.ensemble --data ../shared/data/speech_commands --out
model/artifacts/yesno`

trains each member of MEMBERS with `model.training.train` (seed 0, its own recipe) into
`<out>-members/`, then writes one artifact whose output is the mean of the members' calibrated
probabilities (each member's own val-fitted temperature folded in): a SavedModel holding both
networks and a model.onnx checked against it, like any artifact, so the pipeline serves it
unchanged; and chooses its keyword decision (context rule and thresholds) on val
(`model.evaluation.thresholds`). With `--members DIR ...` it combines artifacts trained before
instead. With `--start-from ARTIFACT` it fine-tunes the members of an ensemble trained before on
the data, each from its own weights (refresh_member), rather than training them from scratch. Test
figures are measured and stored for the report only; which members to combine was decided on val
(model/README.md).
"""

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model.contract import CLIP_SAMPLES, METADATA_FILE
from model.evaluation.evaluate import (
    DEFAULT_DATA,
    expected_calibration_error,
    load_eval_set,
    negative_log_likelihood,
    predict_in_batches,
)
from model.evaluation.thresholds import choose_and_store_thresholds
from model.serving import saved_model_predictor
from model.training.checkpoint import checkpoint_dir
from model.training.data import DEFAULT_READ_SPEECH
from model.training.train import (
    AUGMENTATION,
    HARD_NEGATIVE_DRAWS,
    HARD_NEGATIVE_WORDS,
    TrainingConfig,
    configure_tensorflow,
    evaluate_and_store,
    export_members,
    train,
)

DEFAULT_OUT = Path("model/artifacts/yesno")
# Fine-tuning the members of an ensemble trained before on the data (--start-from): epochs and
# peak learning rate of each member's run from its own weights.
REFRESH_EPOCHS = 8
REFRESH_PEAK_LEARNING_RATE = 1e-3
CHECK_WINDOWS = 64  # val windows on which the reloaded SavedModel must match the Keras models


@dataclass(frozen=True)
class FineTuning:
    """A second run of `model.training.train` from the trained member (`--init`): epochs, peak
    learning rate, and the share of silence windows replaced by non-speech sounds
    (`--non-speech`)."""

    epochs: int
    peak_learning_rate: float
    non_speech_share: float


@dataclass(frozen=True)
class MemberRecipe:
    """How one member is trained: the `model.training.train` options of its run (and of an
    optional second run from its weights)."""

    architecture: str
    epochs: int
    babble_share: float  # noisy training clips mixed with babble instead of a noise recording
    keyword_phrases: bool  # learns from synthetic answer windows (else --no-keyword-phrases)
    fine_tuning: FineTuning | None = None
    speed_share: float = 0.0  # speech clips played faster or slower (--speed)
    # Momentum of a moving average of the weights, validated and kept instead of the last
    # step's weights (--average); None: no average.
    average_momentum: float | None = None
    # Unknown words drawn more often than the others, and how many times (--hard-negatives,
    # --hard-negative-draws).
    hard_negatives: tuple[str, ...] = HARD_NEGATIVE_WORDS
    hard_negative_draws: int = HARD_NEGATIVE_DRAWS
    word_head_weight: float = 0.0  # a head naming each example's own word (--word-head); 0: none
    reverb_share: float = 0.0  # speech clips heard through a synthetic room (--reverb)
    flite_share: float = 0.0  # synthetic utterances spoken by flite, not espeak-ng (--flite)


# The same DS-CNN on raw and on loudness-normalised input (model/README.md): the second is
# robust to gain and babble, the first keeps its failures on some noise out of the labels. Two
# DS-CNNs score windows about twice as fast as a DS-CNN with a BC-ResNet, whose broadcast
# residuals cost more time than their multiply-adds suggest. The second is fine-tuned with
# non-speech sounds among its silence windows, so hummed tones do not sound like `no` to it.
MEMBERS = (
    MemberRecipe("ds-cnn-m", epochs=20, babble_share=0.3, keyword_phrases=True),
    MemberRecipe(
        "ds-cnn-m-ln",
        epochs=20,
        babble_share=0.5,
        keyword_phrases=True,
        fine_tuning=FineTuning(epochs=5, peak_learning_rate=1e-3, non_speech_share=0.3),
    ),
)


def trained_already(path: Path, seed: int, epochs: int) -> bool:
    """Whether `path` holds a finished training run of this seed and length (no checkpoint
    left beside it), which a rerun of the ensemble's training keeps instead of retraining."""
    metadata_path = path / METADATA_FILE
    if not metadata_path.exists() or checkpoint_dir(path).exists():
        return False
    training = json.loads(metadata_path.read_text())["training"]
    return training.get("seed") == seed and training.get("epochs") == epochs


def train_members(
    data_dir: Path,
    members_dir: Path,
    seed: int,
    read_speech_dir: Path = DEFAULT_READ_SPEECH,
    architectures: tuple[str, ...] | None = None,
    start_from: Path | None = None,
) -> list[Path]:
    """Train each member of MEMBERS (those of `architectures` only, when given) into
    members_dir/<architecture> (a fine-tuned one into members_dir/<architecture>-tuned); with
    `start_from`, an ensemble trained before, fine-tune its members instead (refresh_member).
    Each run resumes from its checkpoint and a finished run is kept; returns the paths of the
    members to combine."""
    recipes = [r for r in MEMBERS if architectures is None or r.architecture in architectures]
    starts = (
        split_members(start_from, members_dir, [recipe.architecture for recipe in recipes])
        if start_from
        else {}
    )
    paths = []
    for recipe in recipes:
        config = member_config(recipe, data_dir, seed, read_speech_dir)
        if start_from:
            paths.append(refresh_member(recipe, config, starts[recipe.architecture], members_dir))
        else:
            paths.append(train_member(recipe, config, members_dir))
    return paths


def member_config(
    recipe: MemberRecipe, data_dir: Path, seed: int, read_speech_dir: Path
) -> TrainingConfig:
    """The training run of a member's recipe, from scratch."""
    return TrainingConfig(
        data_dir=data_dir,
        seed=seed,
        epochs=recipe.epochs,
        architecture=recipe.architecture,
        augmentation=AUGMENTATION
        | {
            "babble_share": recipe.babble_share,
            "speed_share": recipe.speed_share,
            "reverb_share": recipe.reverb_share,
        },
        hard_negatives=recipe.hard_negatives,
        hard_negative_draws=recipe.hard_negative_draws,
        read_speech_dir=read_speech_dir,
        keyword_phrases=recipe.keyword_phrases,
        average_momentum=recipe.average_momentum,
        word_head_weight=recipe.word_head_weight,
        flite_share=recipe.flite_share,
    )


def train_member(recipe: MemberRecipe, config: TrainingConfig, members_dir: Path) -> Path:
    """The member trained from scratch, then fine-tuned from its weights if its recipe says so
    (the same choices, its FineTuning's epochs, learning rate and non-speech share)."""
    path = members_dir / recipe.architecture
    if not trained_already(path, config.seed, config.epochs):
        train(config, path)
    tuning = recipe.fine_tuning
    if not tuning:
        return path
    tuned = members_dir / f"{recipe.architecture}-tuned"
    if not trained_already(tuned, config.seed, tuning.epochs):
        tuning_config = replace(
            config,
            epochs=tuning.epochs,
            augmentation=config.augmentation | {"non_speech_share": tuning.non_speech_share},
            init_dir=path,
            peak_learning_rate=tuning.peak_learning_rate,
        )
        train(tuning_config, tuned)
    return tuned


def refresh_member(
    recipe: MemberRecipe, config: TrainingConfig, start: Path, members_dir: Path
) -> Path:
    """A member of an ensemble trained before (`start`, from split_members) fine-tuned on the
    data for REFRESH_EPOCHS from its own weights, with its recipe's choices and its
    fine-tuning's non-speech share, into members_dir/<architecture>-refreshed."""
    path = members_dir / f"{recipe.architecture}-refreshed"
    if not trained_already(path, config.seed, REFRESH_EPOCHS):
        non_speech = recipe.fine_tuning.non_speech_share if recipe.fine_tuning else 0.0
        refresh_config = replace(
            config,
            epochs=REFRESH_EPOCHS,
            augmentation=config.augmentation | {"non_speech_share": non_speech},
            init_dir=start,
            peak_learning_rate=REFRESH_PEAK_LEARNING_RATE,
        )
        train(refresh_config, path)
    return path


def split_members(artifact: Path, members_dir: Path, architectures: list[str]) -> dict[str, Path]:
    """The networks of the ensemble `artifact` whose architectures are named, each as an
    artifact of its own (its temperature and training record kept) in
    members_dir/<architecture>-start, where `model.training.train --init` can start from it."""
    configure_tensorflow(seed=0)
    from model.export.artifact import artifact_metadata, export_saved_model, write_metadata
    from model.export.onnx_export import rebuild_keras_models

    metadata = json.loads((artifact / METADATA_FILE).read_text())
    if "members" not in metadata["architecture"]:
        raise ValueError(f"{artifact} is one network, not an ensemble: use train --init")
    described = metadata["architecture"]["members"]
    missing = set(architectures) - {member["name"] for member in described}
    if missing:
        raise ValueError(f"{artifact} has no member of architecture {sorted(missing)}")
    networks = rebuild_keras_models(artifact, [member["name"] for member in described])
    temperatures = metadata["calibration"]["member_temperatures"]
    check = np.random.default_rng(0).normal(0.0, 0.1, (8, CLIP_SAMPLES)).astype(np.float32)
    starts = {}
    for network, temperature, architecture, training in zip(
        networks, temperatures, described, metadata["training"]["members"], strict=True
    ):
        if architecture["name"] not in architectures:
            continue
        path = members_dir / f"{architecture['name']}-start"
        export_saved_model([(network, temperature)], path, check)
        fields = {"temperature": temperature}
        write_metadata(
            path,
            artifact_metadata(
                path, architecture=architecture, calibration=fields, training=training
            ),
        )
        starts[architecture["name"]] = path
    return starts


def combine(member_dirs: list[Path], out_dir: Path, data_dir: Path, read_speech_dir: Path) -> dict:
    """Write the ensemble artifact of the trained artifacts member_dirs; returns its metadata."""
    configure_tensorflow(seed=0)
    from model.export.artifact import (
        artifact_metadata,
        write_metadata,
    )
    from model.export.onnx_export import rebuild_keras_model
    from model.training.architecture import feature_macs

    started = time.monotonic()
    metadata = [json.loads((path / METADATA_FILE).read_text()) for path in member_dirs]
    members = [
        (
            rebuild_keras_model(path, meta["architecture"]["name"]),
            meta["calibration"]["temperature"],
        )
        for path, meta in zip(member_dirs, metadata, strict=True)
    ]
    val_waveforms, val_labels, _ = load_eval_set(data_dir, "val")
    onnx = export_members(out_dir, members, data_dir, val_waveforms, CHECK_WINDOWS)
    val_probabilities = predict_in_batches(saved_model_predictor(str(out_dir)), val_waveforms)
    architectures = [meta["architecture"] for meta in metadata]
    ensemble = artifact_metadata(
        out_dir,
        architecture={
            "name": "ensemble(" + ", ".join(a["name"] for a in architectures) + ")",
            "combination": "mean of the members' softmax(logits / temperature)",
            "parameters": sum(a["parameters"] for a in architectures),
            "macs_per_window": sum(a["macs_per_window"] for a in architectures),
            "feature_macs_per_window_approx": len(architectures) * feature_macs(),
            "members": architectures,
        },
        training={
            "epochs": " + ".join(str(meta["training"]["epochs"]) for meta in metadata),
            "members": [
                {"model_version": meta["model_version"], **meta["training"]} for meta in metadata
            ],
            "wall_seconds": round(
                sum(meta["training"]["wall_seconds"] for meta in metadata)
                + time.monotonic()
                - started,
                1,
            ),
        },
        calibration={
            "fitted_on": "each member on val speech clips + val silence windows, clean",
            "member_temperatures": [meta["calibration"]["temperature"] for meta in metadata],
            "val_ece": expected_calibration_error(val_probabilities, val_labels),
            "val_nll": negative_log_likelihood(val_probabilities, val_labels),
        },
        onnx=onnx,
    )
    write_metadata(out_dir, ensemble)
    choose_and_store_thresholds(out_dir, data_dir, read_speech_dir)
    evaluate_and_store(out_dir, data_dir)
    return ensemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--read-speech", type=Path, default=DEFAULT_READ_SPEECH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--members",
        type=Path,
        nargs="+",
        help="combine these trained artifacts instead of training MEMBERS",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[recipe.architecture for recipe in MEMBERS],
        metavar="ARCH",
        help="train only these members and do not combine: run one process per member to"
        " train them side by side, then the command without --only combines them",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        metavar="ARTIFACT",
        help=f"fine-tune the members of this trained ensemble on the data ({REFRESH_EPOCHS}"
        " epochs each, from its own weights) instead of training them from scratch",
    )
    args = parser.parse_args()
    started = time.monotonic()
    members_dir = args.out.with_name(args.out.name + "-members")
    if args.only:
        train_members(
            args.data, members_dir, args.seed, args.read_speech, tuple(args.only), args.start_from
        )
        return
    member_dirs = args.members or train_members(
        args.data, members_dir, args.seed, args.read_speech, start_from=args.start_from
    )
    combine(member_dirs, args.out, args.data, args.read_speech)
    print(f"total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
