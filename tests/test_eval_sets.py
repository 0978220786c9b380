"""Evaluation recordings (spoken answers, continuous speech, non-speech sounds) and their
labelling by the pipeline's own decision."""

import re

import numpy as np
import pytest

from model.evaluation.eval_sets import (
    FLITE,
    TELEPHONE_RATE,
    WITH_SPEECH,
    continuous_speech,
    non_speech,
    reading_text,
    spoken_answers,
)
from model.evaluation.evaluate import answers_report, label_recordings, recording_windows
from model.training.synth import (
    EVAL_VARIANTS,
    FLITE_EVAL_VOICES,
    FLITE_TRAIN_VOICES,
    TRAIN_VARIANTS,
    FliteVoice,
    espeak_available,
    flite_available,
    mixed_voices,
    random_voices,
    speak,
)
from pipeline.cli import main
from tests.helpers import read_output, write_wav

needs_synthesizers = pytest.mark.skipif(
    not (espeak_available() and flite_available()),
    reason="espeak-ng or flite is not installed (.ci/run installs them)",
)


def test_evaluation_voices_are_never_training_voices():
    assert EVAL_VARIANTS and TRAIN_VARIANTS
    assert not set(EVAL_VARIANTS) & set(TRAIN_VARIANTS)
    assert FLITE_EVAL_VOICES and FLITE_TRAIN_VOICES
    assert not set(FLITE_EVAL_VOICES) & set(FLITE_TRAIN_VOICES)


def test_training_voices_mix_flite_in_at_its_share_and_without_it_draw_as_espeak_alone():
    voices = mixed_voices(1_000, np.random.default_rng(0), 0.3)
    flite = [voice for voice in voices if isinstance(voice, FliteVoice)]
    assert 250 < len(flite) < 350
    assert {voice.name for voice in flite} == set(FLITE_TRAIN_VOICES)
    assert {voice.name.split("+")[1] for voice in voices if voice not in flite} <= set(
        TRAIN_VARIANTS
    )
    # With no flite share the random stream is the one earlier training runs drew.
    alone = random_voices(50, np.random.default_rng(1), TRAIN_VARIANTS)
    assert mixed_voices(50, np.random.default_rng(1), 0.0) == alone


@needs_synthesizers
def test_a_flite_voice_speaks_at_16_khz_and_its_duration_stretch_sets_the_length():
    fast = speak("no thank you", FliteVoice("slt", 0.8, 150.0))
    slow = speak("no thank you", FliteVoice("slt", 1.3, 150.0))
    assert fast.dtype == slow.dtype == np.float32
    assert 0.05 < np.abs(fast).max() <= 1.0
    assert 0.5 < len(fast) / 16_000 < 2.0
    assert 1.3 < len(slow) / len(fast) < 1.9  # 1.3 / 0.8 = 1.6 for the words; pauses move less


def test_non_speech_clips_are_fixed_per_split_and_differ_between_splits():
    val, test = non_speech("val", 40), non_speech("test", 40)
    assert val.shape == test.shape == (40, 16_000)
    np.testing.assert_array_equal(val, non_speech("val", 40))  # the same clips every time
    assert not np.array_equal(val, test)
    assert np.abs(val).max() <= 1.0
    # About two sound events per second over a faint hiss: most clips hold one (e^-2 none).
    assert (np.abs(val).max(axis=1) > 0.01).mean() > 0.7


def test_the_reading_holds_neither_keyword_nor_its_homophone():
    words = set(re.findall(r"[a-z']+", reading_text().lower()))
    assert len(words) > 150
    assert not words & {"yes", "no", "know"}


@needs_synthesizers
def test_spoken_answers_are_short_files_half_of_them_answers(data_dir):
    sizes = {"synthetic": 24, "assembled": 24, "with_speech": 24, "flite": 24}
    read_speech = data_dir.parent / "read_speech"
    recordings = spoken_answers(data_dir, "val", **sizes, read_speech_dir=read_speech)
    assert len(recordings) == 96
    truths = [r.truth for r in recordings]
    assert truths.count("yes") == truths.count("no") == 24 and truths.count("none") == 48
    # The flite kind speaks only in voices that training never uses (name: ... voice condition).
    flite = [r for r in recordings if r.kind == FLITE]
    assert len(flite) == 24
    assert {r.name.split()[-2] for r in flite} == set(FLITE_EVAL_VOICES)
    durations = [len(r.audio) / r.sample_rate for r in recordings]
    assert 0.5 < min(durations) and max(durations) < 6.0
    assert {r.sample_rate for r in recordings} == {16_000, TELEPHONE_RATE}
    # A keyword with real speech before or after it: 1-4 s in all (with the pauses around).
    with_speech = [r for r in recordings if r.kind == WITH_SPEECH]
    assert len(with_speech) == 24
    assert all(1.0 < len(r.audio) / r.sample_rate < 4.0 for r in with_speech if r.truth != "none")
    assert {"then speech" in r.name for r in with_speech if r.truth != "none"} == {True, False}
    again = spoken_answers(data_dir, "val", **sizes, read_speech_dir=read_speech)  # seeded
    assert [r.name for r in again] == [r.name for r in recordings]


@needs_synthesizers
def test_evaluation_labels_recordings_exactly_as_the_pipeline_does(
    data_dir, keyword_model, tmp_path
):
    recordings = spoken_answers(
        data_dir, "test", synthetic=12, assembled=12, with_speech=0, flite=0
    )
    recordings += continuous_speech(data_dir, data_dir.parent / "read_speech", "test", 1, 1, 8.0)[
        -2:
    ]
    windows = recording_windows(keyword_model, recordings)
    results = label_recordings(recordings, windows, keyword_model.decision)
    folder = tmp_path / "in"
    for index, recording in enumerate(recordings):
        write_wav(folder / f"{index:03d}.wav", recording.audio, recording.sample_rate)
    assert main(["--input", str(folder), "--output", str(tmp_path / "out")]) == 0
    rows = read_output(tmp_path / "out")
    assert [row["label"] for row in rows] == [result.label for result in results]
    for row, result, result_windows in zip(rows, results, windows, strict=True):
        scores = result_windows[result.deciding_window]
        np.testing.assert_allclose(row["score_yes"], scores[0], atol=1e-5)
        np.testing.assert_array_equal(result.keyword_peaks, result_windows[:, :2].max(axis=0))
    report = answers_report(results[:24])
    assert report["all"]["answers"] == report["all"]["non_answers"] == 12
    # Each file labelled wrong is listed with how near its windows came to each keyword.
    wrong = [
        result
        for result in results[:24]
        if result.label != result.recording.truth
        and (result.recording.truth != "none" or result.label in ("yes", "no"))
    ]
    assert len(report["wrong"]) == len(wrong)
    for line, result in zip(report["wrong"], wrong, strict=True):
        yes_peak, no_peak = result.keyword_peaks  # the windows' maxima, checked above
        peaks = f"peak p(yes) {yes_peak:.2f}, p(no) {no_peak:.2f}"
        assert line.startswith(result.recording.name) and peaks in line
