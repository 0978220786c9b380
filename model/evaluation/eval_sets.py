"""Evaluation recordings beyond 1 s clips: spoken answers, and continuous speech without keywords.

Built deterministically (a seed per split) from a split's own speakers and the evaluation voices
of `model.training.synth`, never from anything training reads:

- spoken answers (`spoken_answers`): 1-5 s files that answer yes or no ("yes please", "no thank
  you") and files that do not ("I'm not sure", "call me later"), spoken by espeak-ng or by
  flite (a second synthesizer, in voices never trained on), assembled from the split's clips
  with pauses, or a keyword clip with a piece of the split's real read
  speech before or after it; some in noise, some as 8 kHz telephone audio.
- continuous speech (`continuous_speech`): the split's read sentences, long synthetic readings of
  public-domain text with the keywords taken out, and chains of the split's non-keyword clips
  with no gaps. Every window of these is a non-keyword.
- non-speech (`non_speech`): 1 s clips of hiss with harmonic tones and noise bursts
  (`sound_events`), vowel-like sounds that are no speech at all.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from model.contract import SAMPLE_RATE
from model.training.data import (
    DEFAULT_READ_SPEECH,
    active_region,
    load_noise,
    load_read_speech,
    read_audio,
    read_manifest,
    rms,
)
from model.training.synth import (
    EVAL_VARIANTS,
    FLITE_EVAL_VOICES,
    FliteVoice,
    Voice,
    random_flite_voices,
    random_voices,
    speak,
)

ANSWERS = {
    "yes": (
        "yes", "yes please", "yes I do", "yes that's right", "yes of course", "oh yes",
        "yes, I think so", "yes thank you", "well, yes", "yes definitely", "yes, it is",
        "yes, go ahead",
    ),
    "no": (
        "no", "no thank you", "no I don't", "no, not really", "no that's wrong", "oh no",
        "no, never", "no thanks", "well, no", "no, not today", "no, it isn't", "no, please stop",
    ),
}  # fmt: skip
NON_ANSWERS = (
    "I'm not sure", "call me later", "what was the question", "maybe", "I don't remember",
    "can you repeat that", "it depends", "let me think about it", "hello, who is this",
    "sorry, I didn't catch that", "perhaps tomorrow", "good morning", "I have to go now",
    "just a moment", "send me an email", "that's a good question", "the weather is nice today",
    "I'd rather not say", "ask my husband", "next question please", "hold on a second",
    "I need to check my calendar", "could be", "not at the moment", "who gave you this number",
)  # fmt: skip
# Public-domain text (Lincoln's Gettysburg Address; the opening of Carroll's "Alice's Adventures
# in Wonderland"; the US Declaration of Independence), read with the keywords taken out.
READING = """
Four score and seven years ago our fathers brought forth on this continent, a new nation,
conceived in Liberty, and dedicated to the proposition that all men are created equal. Now we are
engaged in a great civil war, testing whether that nation, or any nation so conceived and so
dedicated, can long endure. We are met on a great battle-field of that war. We have come to
dedicate a portion of that field, as a final resting place for those who here gave their lives
that that nation might live. It is altogether fitting and proper that we should do this.
Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing
to do: once or twice she had peeped into the book her sister was reading, but it had pictures or
conversations in it, and what is the use of a book, thought Alice, without pictures or
conversations? So she was considering in her own mind, as well as she could, for the hot day made
her feel very sleepy and stupid, whether the pleasure of making a daisy-chain would be worth the
trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran
close by her. There was nothing so very remarkable in that; nor did Alice think it so very much
out of the way to hear the Rabbit say to itself, Oh dear! Oh dear! I shall be late!
When in the Course of human events, it becomes necessary for one people to dissolve the political
bands which have connected them with another, and to assume among the powers of the earth, the
separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent
respect to the opinions of mankind requires that they should declare the causes which impel them
to the separation. We hold these truths to be self-evident, that all men are created equal, that
they are endowed by their Creator with certain unalienable Rights, that among these are Life,
Liberty and the pursuit of Happiness.
"""
# Words taken out of the reading: the keywords, and "know", which sounds exactly like "no".
REMOVED_WORDS = ("yes", "no", "know")
NOISE_SHARE = 0.3
NOISE_SNR_DB = (10.0, 30.0)
TELEPHONE_SHARE = 0.3
TELEPHONE_RATE = 8_000
SEEDS = {"val": 11, "test": 23}
EVENTS_IN_BANK = 256
READ_SENTENCES = "read speech"  # the `kind` of continuous_speech's real read sentences
WITH_SPEECH = "with speech"  # the `kind` of spoken answers with real speech around the keyword
FLITE = "flite"  # the `kind` of spoken answers in flite's evaluation voices
# Each kind of spoken answers cycles through these truths: half answers, half non-answers.
TRUTHS = ("yes", "no", "none", "none")


@dataclass(frozen=True)
class EvalRecording:
    """One evaluation file: its audio at `sample_rate` (16 kHz, or 8 kHz for telephone audio,
    which the pipeline resamples), and its truth: `yes`, `no`, or `none` (neither keyword)."""

    name: str
    audio: np.ndarray
    sample_rate: int
    truth: str
    kind: str


def reading_text() -> str:
    """READING with REMOVED_WORDS taken out."""
    pattern = r"\b(" + "|".join(REMOVED_WORDS) + r")\b"
    return re.sub(r"\s+", " ", re.sub(pattern, "", READING, flags=re.IGNORECASE)).strip()


def silence_gap(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Digital silence of low to high seconds: a pause between words or around an utterance."""
    return np.zeros(int(rng.uniform(low, high) * SAMPLE_RATE), np.float32)


def split_clips(data_dir: Path, split: str) -> dict[str, list[np.ndarray]]:
    """The split's clips by label (yes, no, unknown), each cut to its active region."""
    clips: dict[str, list[np.ndarray]] = {"yes": [], "no": [], "unknown": []}
    for row in read_manifest(data_dir):
        if row.split == split and row.label in clips:
            audio = read_audio(Path(data_dir) / row.path)
            start, end = active_region(audio)
            clips[row.label].append(audio[start:end])
    return clips


def as_recorded(
    audio: np.ndarray, noise: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, int, str]:
    """Leading and trailing silence, then noise (NOISE_SHARE) or telephone band and rate
    (TELEPHONE_SHARE) or neither: (audio, rate to store it at, condition)."""
    audio = np.concatenate([silence_gap(rng, 0.05, 0.6), audio, silence_gap(rng, 0.05, 0.6)])
    condition = rng.choice(["clean", "noise", "telephone"], p=[0.4, NOISE_SHARE, TELEPHONE_SHARE])
    if condition == "noise":
        segment = noise[rng.integers(len(noise))]
        start = int(rng.integers(max(len(segment) - len(audio), 0) + 1))
        background = np.resize(segment[start : start + len(audio)], len(audio))
        snr = rng.uniform(*NOISE_SNR_DB)
        scale = rms(audio)[0] / 10 ** (snr / 20) / max(float(rms(background)[0]), 1e-8)
        audio = audio + background * scale
    peak = max(float(np.abs(audio).max()), 1e-8)
    audio = (audio * rng.uniform(0.1, 0.9) / peak).astype(np.float32)
    if condition == "telephone":
        narrow = soxr.resample(audio, SAMPLE_RATE, TELEPHONE_RATE, quality="HQ")
        return narrow.astype(np.float32), TELEPHONE_RATE, str(condition)
    return audio, SAMPLE_RATE, str(condition)


def speech_piece(
    recordings: list[np.ndarray], seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """`seconds` of one of the read-speech `recordings`, at least a third of its own level (so
    not a pause between sentences)."""
    length = int(seconds * SAMPLE_RATE)
    while True:
        recording = recordings[int(rng.integers(len(recordings)))]
        start = int(rng.integers(max(len(recording) - length, 0) + 1))
        piece = recording[start : start + length]
        if rms(piece)[0] >= rms(recording)[0] / 3:
            return piece


def synthetic_answers(
    voices: list[Voice] | list[FliteVoice],
    kind: str,
    noise: list[np.ndarray],
    rng: np.random.Generator,
) -> list[EvalRecording]:
    """One answer or non-answer spoken by each voice: yes, no, then two non-answers, repeated."""
    recordings = []
    for index, voice in enumerate(voices):
        truth = TRUTHS[index % len(TRUTHS)]
        text = str(rng.choice(NON_ANSWERS if truth == "none" else ANSWERS[truth]))
        audio, rate, condition = as_recorded(speak(text, voice), noise, rng)
        name = f"{kind}-{index:04d} {text!r} {voice.name} {condition}"
        recordings.append(EvalRecording(name, audio, rate, truth, kind))
    return recordings


def spoken_answers(
    data_dir: Path,
    split: str,
    synthetic: int = 400,
    assembled: int = 300,
    with_speech: int = 200,
    flite: int = 200,
    read_speech_dir: Path = DEFAULT_READ_SPEECH,
) -> list[EvalRecording]:
    """Spoken answers and non-answers of 1-5 s: `synthetic` spoken by espeak-ng in the evaluation
    voices, `assembled` from the split's clips, `with_speech` from the split's real speech (a
    keyword clip with 0.3-1.5 s of a read sentence before or after it, as "no" + "thank you"; a
    non-answer is the speech alone) and `flite` spoken by flite in its evaluation voices; in
    each, half answers (yes and no alike) and half non-answers."""
    rng = np.random.default_rng(SEEDS[split])
    noise = load_noise(data_dir, split)
    voices = random_voices(synthetic, rng, EVAL_VARIANTS)
    recordings = synthetic_answers(voices, "synthetic", noise, rng)
    clips = split_clips(data_dir, split)
    for index in range(assembled):
        truth = TRUTHS[index % len(TRUTHS)]
        words = [clips["unknown"][i] for i in rng.integers(len(clips["unknown"]), size=3)]
        count = int(rng.integers(1, 4))
        if truth == "none":
            sequence = words[:count]
        else:
            keyword = clips[truth][rng.integers(len(clips[truth]))]
            position = int(rng.integers(count))
            sequence = [*words[:position], keyword, *words[position : count - 1]]
        pieces = [piece for word in sequence for piece in (word, silence_gap(rng, 0.0, 0.5))]
        audio, rate, condition = as_recorded(np.concatenate(pieces[:-1]), noise, rng)
        name = f"assembled-{index:04d} {len(sequence)} words, {truth} {condition}"
        recordings.append(EvalRecording(name, audio, rate, truth, "assembled"))
    sentences = load_read_speech(read_speech_dir, split)[0] if with_speech else []
    for index in range(with_speech):
        truth = TRUTHS[index % len(TRUTHS)]
        speech = speech_piece(sentences, rng.uniform(0.3, 1.5), rng)
        gap = silence_gap(rng, 0.0, 0.3)
        if truth == "none":
            pieces, where = [speech], "speech only"
        else:
            keyword = clips[truth][rng.integers(len(clips[truth]))]
            after = bool(rng.integers(2))
            pieces = [keyword, gap, speech] if after else [speech, gap, keyword]
            where = f"{truth} then speech" if after else f"speech then {truth}"
        audio, rate, condition = as_recorded(np.concatenate(pieces), noise, rng)
        name = f"with-speech-{index:04d} {where}, {len(speech) / SAMPLE_RATE:.1f} s {condition}"
        recordings.append(EvalRecording(name, audio, rate, truth, WITH_SPEECH))
    flite_voices = random_flite_voices(flite, rng, FLITE_EVAL_VOICES)
    return recordings + synthetic_answers(flite_voices, FLITE, noise, rng)


def continuous_speech(
    data_dir: Path,
    read_speech_dir: Path,
    split: str,
    readings: int = 48,
    chains: int = 48,
    chain_seconds: float = 30.0,
) -> list[EvalRecording]:
    """Continuous speech with neither keyword: the split's read sentences, `readings` synthetic
    readings of reading_text() (each from a random sentence on, about 30-60 s, evaluation voices)
    and `chains` chains of the split's non-keyword clips, back to back with no gap. The defaults
    make about an hour of val or test speech, so a false-occurrence figure (and the threshold
    chosen for its budget) rests on about ten occurrences, not on two or three."""
    rng = np.random.default_rng(SEEDS[split] + 1)
    audio, paths = load_read_speech(read_speech_dir, split)
    recordings = [
        EvalRecording(f"read {path}", clip, SAMPLE_RATE, "none", READ_SENTENCES)
        for clip, path in zip(audio, paths, strict=True)
    ]
    sentences = [s.strip() for s in re.split(r"(?<=[.:?!;])\s", reading_text()) if s.strip()]
    for index, voice in enumerate(random_voices(readings, rng, EVAL_VARIANTS)):
        first = int(rng.integers(len(sentences)))
        text = " ".join(sentences[first:] + sentences[:first])[: int(rng.integers(500, 900))]
        recordings.append(
            EvalRecording(
                f"reading-{index:02d} {voice.accent}+{voice.variant} {voice.rate} wpm",
                speak(text, voice),
                SAMPLE_RATE,
                "none",
                "synthetic reading",
            )
        )
    unknown = split_clips(data_dir, split)["unknown"]
    for index in range(chains):
        pieces, length = [], 0
        while length < chain_seconds * SAMPLE_RATE:
            word = unknown[rng.integers(len(unknown))]
            pieces.append(word / max(float(np.abs(word).max()), 1e-8) * 0.5)
            length += len(word)
        recordings.append(
            EvalRecording(
                f"chain-{index:02d}", np.concatenate(pieces), SAMPLE_RATE, "none", "word chain"
            )
        )
    return recordings


@dataclass(frozen=True)
class PlacedKeyword:
    """A keyword said in a long recording: `yes` or `no`, and the centre of the word."""

    label: str
    centre_s: float


@dataclass(frozen=True)
class LongRecording:
    """A long evaluation file (`long_recordings`): its audio at `sample_rate`, and every keyword
    in it with its time."""

    name: str
    audio: np.ndarray
    sample_rate: int
    keywords: tuple[PlacedKeyword, ...]


def long_recording(
    clips: dict[str, list[np.ndarray]],
    noise: list[np.ndarray],
    rng: np.random.Generator,
    duration_s: float,
    keyword_share: float,
    name: str = "long",
) -> tuple[np.ndarray, tuple[PlacedKeyword, ...]]:
    """16 kHz audio of `duration_s`: a noise floor (a noise recording at -50 to -35 dBFS) with
    words of `clips` (split_clips) placed 0.3-3 s apart at random levels, a `keyword_share` of
    them `yes` or `no` and the rest other words; and the keywords with their centres."""
    length = int(duration_s * SAMPLE_RATE)
    segment = noise[rng.integers(len(noise))]
    floor_db = rng.uniform(-50.0, -35.0)
    background = np.resize(np.roll(segment, -int(rng.integers(len(segment)))), length)
    audio = background * (10 ** (floor_db / 20) / max(float(rms(background)[0]), 1e-8))
    keywords = []
    position = int(rng.uniform(0.3, 2.0) * SAMPLE_RATE)
    while True:
        label = rng.choice(["yes", "no"]) if rng.random() < keyword_share else "unknown"
        pool = clips[str(label)]
        word = pool[rng.integers(len(pool))]
        if position + len(word) > length:
            break
        level_db = rng.uniform(-30.0, -12.0)
        audio[position : position + len(word)] += word * (
            10 ** (level_db / 20) / max(float(rms(word)[0]), 1e-8)
        )
        if label != "unknown":
            keywords.append(PlacedKeyword(str(label), (position + len(word) / 2) / SAMPLE_RATE))
        position += len(word) + int(rng.uniform(0.3, 3.0) * SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), tuple(keywords)


def long_recordings(
    data_dir: Path,
    split: str,
    count: int,
    minutes: tuple[float, float] = (1.0, 6.0),
    keyword_share: float = 0.25,
    rates: tuple[int, ...] = (8_000, 16_000, 44_100),
) -> list[LongRecording]:
    """`count` long recordings of the split's words at known times (long_recording), each
    stored at the next of `rates`; with keyword_share 0, keyword-free audio to count false
    alarms on."""
    rng = np.random.default_rng(SEEDS[split] + 1)
    clips, noise = split_clips(data_dir, split), load_noise(data_dir, split)
    recordings = []
    for index in range(count):
        duration_s = 60 * rng.uniform(*minutes)
        audio, keywords = long_recording(clips, noise, rng, duration_s, keyword_share)
        rate = rates[index % len(rates)]
        if rate != SAMPLE_RATE:
            audio = soxr.resample(audio, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
        name = f"{split}-{index:03d}-{rate // 1000}k"
        recordings.append(LongRecording(name, audio, rate, keywords))
    return recordings


def match_events(
    events: list[tuple[str, float, float]], keywords: tuple[PlacedKeyword, ...]
) -> tuple[list[float], int, int]:
    """Events (label, start_s, end_s) against the keywords said: an event finds the nearest
    keyword of its label whose centre lies within it, each keyword found once. Returns the
    centre errors (s) of the matches, the unmatched events (false alarms) and the keywords
    missed."""
    unfound = list(keywords)
    errors = []
    false_alarms = 0
    for label, start_s, end_s in sorted(events, key=lambda event: event[1]):
        centre = (start_s + end_s) / 2
        inside = [k for k in unfound if k.label == label and start_s <= k.centre_s <= end_s]
        if not inside:
            false_alarms += 1
            continue
        nearest = min(inside, key=lambda keyword: abs(keyword.centre_s - centre))
        unfound.remove(nearest)
        errors.append(abs(nearest.centre_s - centre))
    return errors, false_alarms, len(unfound)


@functools.cache
def sound_event_bank(sample_rate: int, seed: int) -> tuple[np.ndarray, ...]:
    """Enveloped sound events 0.1-0.6 s long: harmonic tones with vibrato, filtered noise bursts."""
    rng = np.random.default_rng([seed, sample_rate])
    events = []
    for index in range(EVENTS_IN_BANK):
        length = int(rng.uniform(0.1, 0.6) * sample_rate)
        span = np.arange(length) / sample_rate
        if index % 2:
            pitch = rng.uniform(90, 300) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 7) * span))
            phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
            event = sum(np.sin(k * phase) / k for k in range(1, 6))
        else:
            kernel = np.ones(int(rng.integers(1, 12)))
            event = np.convolve(rng.normal(0, 1, length), kernel / kernel.size, mode="same")
        events.append((np.hanning(length) * event).astype(np.float32))
    return tuple(events)


def sound_events(
    rng: np.random.Generator, seconds: float, sample_rate: int, bank_seed: int
) -> np.ndarray:
    """Hiss at a random level plus about two events per second (from the bank of `bank_seed`)
    at random places and gains."""
    samples = int(seconds * sample_rate)
    audio = rng.standard_normal(samples, dtype=np.float32) * np.float32(10 ** rng.uniform(-4, -2))
    bank = sound_event_bank(sample_rate, bank_seed)
    for _ in range(rng.poisson(2 * seconds)):
        event = bank[rng.integers(len(bank))][:samples]
        start = int(rng.integers(0, samples - len(event) + 1))
        audio[start : start + len(event)] += np.float32(rng.uniform(0.02, 0.5)) * event
    return audio


def sound_clips(rng: np.random.Generator, clips: int, bank_seed: int) -> np.ndarray:
    """`clips` 1 s clips of `sound_events` at 16 kHz [clips, 16000] from the bank of
    `bank_seed`, clipped to [-1, 1] as a WAV file holds them."""
    sounds = [sound_events(rng, 1.0, SAMPLE_RATE, bank_seed) for _ in range(clips)]
    empty = np.zeros((0, SAMPLE_RATE), np.float32)
    return np.clip(np.stack(sounds) if sounds else empty, -1.0, 1.0)


def non_speech(split: str, clips: int = 2_000) -> np.ndarray:
    """`sound_clips` from a bank and seed of the split's own: sounds that are no speech, none of
    which may be labelled a keyword."""
    return sound_clips(np.random.default_rng(SEEDS[split] + 2), clips, SEEDS[split])
