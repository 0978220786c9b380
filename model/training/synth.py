"""Synthetic speech from two of Debian's synthesizers, as 16 kHz floats: `espeak-ng` (formant
synthesis: many accents, voice variants, rates and pitches) and `flite` (four recorded voices,
diphone and statistical, at random durations and pitches).

Used twice, with disjoint voices: training adds synthetic keywords, near-miss words and word
sequences (TRAIN voices), and `model.evaluation.evaluate --answers` builds spoken answers and
non-answers (EVAL voices). Both are programs, not Python packages: `apt-get install espeak-ng
flite`.
"""

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from model.contract import SAMPLE_RATE

ESPEAK = "espeak-ng"
FLITE = "flite"
# espeak-ng's English accents (its own voices, no MBROLA data needed) and voice variants.
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak",
    "klatt", "klatt2", "klatt3", "klatt4", "Alex", "Alicia", "Andrea", "Andy", "Annie", "Antonio",
    "Auntie", "Belinda", "Benjamin", "Boris", "Caleb", "David", "Denis", "Ed", "Edward", "Gene",
    "Gustave", "Henrique", "Hugo", "Iven", "Jacky", "John", "Lee", "Linda", "Marco", "Mario",
    "Max", "Michael", "Mike", "Nguyen", "Pablo", "Paul", "Pedro", "Quincy", "Rob", "Robert",
    "Steph", "Storm", "Zac", "anika", "grandma", "grandpa", "norbert", "sandro", "shelby",
    "travis", "victor", "adam", "female2", "female3", "female4", "female5", "male2", "male3",
)  # fmt: skip
# Every third variant is kept for evaluation, so the evaluation voices are never trained on.
EVAL_VARIANTS = VARIANTS[::3]
TRAIN_VARIANTS = tuple(v for v in VARIANTS if v not in EVAL_VARIANTS)
RATE_WPM = (110, 240)  # words per minute, espeak's -s
PITCH = (15, 85)  # espeak's -p, 0-99
# flite's English voices (its `kal16` is `kal` at 16 kHz): two for training, two for evaluation,
# a male and a female never trained on.
FLITE_TRAIN_VOICES = ("awb", "rms")
FLITE_EVAL_VOICES = ("kal", "slt")
FLITE_DURATION_STRETCH = (0.75, 1.35)  # flite's duration_stretch: above 1 is slower
FLITE_PITCH_HZ = (80.0, 220.0)  # flite's int_f0_target_mean

# Words said alone or in sequences as non-keywords: the other command words, words that sound
# like part of "yes" or "no", and common words of spoken replies. Not "know" (it sounds exactly
# like "no", so no model can tell them apart by sound) and not "yeah", "yep", "nope", "nah"
# (answers by meaning, left out of both classes).
NON_KEYWORDS = (
    "go", "so", "low", "toe", "snow", "slow", "show", "though", "grow", "row", "note", "nose",
    "now", "new", "knee", "noon", "nor", "not", "nod", "nut", "net", "nine", "down", "dome",
    "own", "oh", "owe", "yet", "yell", "yellow", "yesterday", "yeast", "less", "guess", "dress",
    "mess", "chess", "bless", "test", "west", "best", "jess", "this", "miss", "bus", "kiss",
    "left", "six", "zero", "off", "marvin", "up", "on", "one", "two", "three", "four", "five",
    "seven", "eight", "right", "stop", "bed", "bird", "cat", "dog", "happy", "house", "tree",
    "wow", "sheila", "visual", "learn", "follow", "forward", "backward", "notice", "nobody",
    "maybe", "sure", "okay", "please", "thanks", "hello", "later", "question", "morning",
    "tomorrow", "sorry", "again", "what", "why", "when", "where", "who", "which", "good", "fine",
    "great", "perhaps", "never", "always", "often", "sometimes", "number", "minute", "second",
    "hour", "today", "tonight", "weather", "money", "water", "coffee", "office", "phone", "call",
    "message", "email", "address", "name", "city", "street", "open", "close", "cancel", "repeat",
    "help", "start", "finish", "wait", "listen", "speak", "thank you", "excuse me", "alright",
    "correct", "wrong", "agree", "disagree", "absolutely", "definitely", "probably", "certainly",
    "nothing", "everything", "something", "anything", "idea", "reason", "problem", "answer",
)  # fmt: skip


@dataclass(frozen=True)
class Voice:
    """One way of speaking: accent, variant, rate (words per minute) and pitch."""

    accent: str
    variant: str
    rate: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    def command(self, text: str) -> list[str]:
        """espeak-ng's command line that writes `text` as a WAV file to stdout."""
        rate, pitch = str(self.rate), str(self.pitch)
        return [ESPEAK, "-v", self.name, "-s", rate, "-p", pitch, "--stdout", text]


@dataclass(frozen=True)
class FliteVoice:
    """One of flite's voices at a duration stretch and a mean pitch (Hz)."""

    name: str
    duration_stretch: float
    pitch_hz: float

    def command(self, text: str) -> list[str]:
        """flite's command line that writes `text` as a WAV file to stdout."""
        stretch = f"duration_stretch={self.duration_stretch:.3f}"
        pitch = f"int_f0_target_mean={self.pitch_hz:.1f}"
        return [
            FLITE,
            "-voice",
            self.name,
            "--setf",
            stretch,
            "--setf",
            pitch,
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ]


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def flite_available() -> bool:
    return shutil.which(FLITE) is not None


def random_voices(n: int, rng: np.random.Generator, variants: tuple[str, ...]) -> list[Voice]:
    """n espeak-ng voices: accent, variant, rate and pitch drawn at random."""
    return [
        Voice(
            str(rng.choice(ACCENTS)),
            str(rng.choice(variants)),
            int(rng.integers(*RATE_WPM)),
            int(rng.integers(*PITCH)),
        )
        for _ in range(n)
    ]


def random_flite_voices(
    n: int, rng: np.random.Generator, names: tuple[str, ...]
) -> list[FliteVoice]:
    """n flite voices of `names`, duration stretch and mean pitch drawn at random."""
    return [
        FliteVoice(
            str(rng.choice(names)),
            float(rng.uniform(*FLITE_DURATION_STRETCH)),
            float(rng.uniform(*FLITE_PITCH_HZ)),
        )
        for _ in range(n)
    ]


def mixed_voices(n: int, rng: np.random.Generator, flite_share: float) -> list[Voice | FliteVoice]:
    """n training voices, each a flite training voice with probability `flite_share`, else an
    espeak-ng training voice (with none, the draws of `random_voices` alone)."""
    if flite_share == 0.0:
        return random_voices(n, rng, TRAIN_VARIANTS)
    from_flite = rng.random(n) < flite_share
    espeak = iter(random_voices(int((~from_flite).sum()), rng, TRAIN_VARIANTS))
    flite = iter(random_flite_voices(int(from_flite.sum()), rng, FLITE_TRAIN_VOICES))
    return [next(flite) if chosen else next(espeak) for chosen in from_flite]


def speak(text: str, voice: Voice | FliteVoice) -> np.ndarray:
    """`text` spoken by `voice`: float32 mono at 16 kHz, leading and trailing silence kept."""
    result = subprocess.run(voice.command(text), capture_output=True, check=True)
    audio, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def random_word_sequence(rng: np.random.Generator, low: int = 4, high: int = 12) -> str:
    """A sentence-like run of NON_KEYWORDS, so continuous synthetic speech holds no keyword."""
    return " ".join(rng.choice(NON_KEYWORDS, int(rng.integers(low, high + 1))))
