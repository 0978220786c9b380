"""A run's figures, added up inside the job: rows, labels, errors by kind with examples, score,
duration and sample-rate histograms, the files worth a listen, the files with the most keyword
events, and what the launcher checks (groups written, slices read).

A `Tally` is bounded in size whatever the number of files (fixed bins, a few examples), and two
tallies merge into one, so a Beam combiner adds up the groups of any run (`pipeline.transforms`),
and `yesno-label report` builds the same tally from a dataset's files, a group at a time
(`pipeline.report.tally_dataset`). The
summary and the report are made from it; nothing reads the whole dataset back.
"""

import bisect
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.labels import SCORE_COLUMNS, error_kind

HISTOGRAM_BINS = 20
# Duration bins, in seconds: the last is open-ended.
DURATION_EDGES_S = (0, 0.5, 1, 2, 5, 10, 30, 60, 300, 600, 1_800, 3_600, 14_400, 86_400)
LISTEN_LEAST_CONFIDENT = 12
LISTEN_PER_LABEL = 3
ERROR_EXAMPLES = 3
TIMELINE_FILES = 20
ROW_COLUMNS = [
    "path", "label", *SCORE_COLUMNS, "duration_s", "sample_rate", "error", "window_start_s",
    "keyword_score",
]  # fmt: skip
EVENT_COLUMNS = ["path", "label", "start_s", "end_s"]


def score_bin(score: float) -> int:
    """The bin of a score in [0, 1]: HISTOGRAM_BINS equal bins, 1.0 in the last."""
    return min(max(int(score * HISTOGRAM_BINS), 0), HISTOGRAM_BINS - 1)


def duration_bin(duration_s: float) -> int:
    """The DURATION_EDGES_S bin of a duration: [edge i, edge i + 1), the last bin open-ended."""
    return int(np.searchsorted(DURATION_EDGES_S, duration_s, side="right")) - 1


def label_confidence(row: dict) -> float:
    """How sure the row's label is: the score of the class it names."""
    return row[f"score_{row['label']}"]


def _least_sure_first(row: dict) -> tuple:
    return label_confidence(row), row["path"]


def _surest_first(row: dict) -> tuple:
    return -label_confidence(row), row["path"]


def _merge_top(first: list, second: list, key, limit: int) -> list:
    return sorted(first + second, key=key)[:limit]


def add_counts(first: list[int], second: list[int]) -> list[int]:
    return [a + b for a, b in zip(first, second, strict=True)]


def _insert_top(items: list, item, key, limit: int, store=None) -> None:
    """Put `item` (or what `store` makes of it) into `items`, sorted by key and at most limit
    long, if it ranks."""
    if len(items) == limit and key(item) >= key(items[-1]):
        return
    bisect.insort(items, store(item) if store else item, key=key)
    del items[limit:]


def _report_columns(row: dict) -> dict:
    return {column: row.get(column) for column in ROW_COLUMNS}


@dataclass
class Tally:
    rows: int = 0
    labelled: int = 0  # files labelled by this run (the others were kept from earlier output)
    labels: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, list[str]] = field(default_factory=dict)  # the first paths, sorted
    score_bins: dict[str, list[int]] = field(
        default_factory=lambda: {column: [0] * HISTOGRAM_BINS for column in SCORE_COLUMNS}
    )
    duration_bins: list[int] = field(default_factory=lambda: [0] * len(DURATION_EDGES_S))
    sample_rates: Counter = field(default_factory=Counter)
    least_confident: list[dict] = field(default_factory=list)
    # Per label, enough of the surest that LISTEN_PER_LABEL remain beside the least confident.
    surest: dict[str, list[dict]] = field(default_factory=dict)
    events: int = 0
    files_with_events: int = 0
    busiest: list[dict] = field(default_factory=list)  # {path, duration_s, events}
    # What the launcher checks: Parquet files written, input slices (pipeline.sources) read to
    # their end, the paths those slices listed, and the paths the written groups received.
    groups: int = 0
    slices_done: int = 0
    listed: int = 0
    received: int = 0
    # Bucket requests that failed transiently, and those of them tried again, per operation
    # (pipeline.retries).
    io_failures: Counter = field(default_factory=Counter)
    io_retries: Counter = field(default_factory=Counter)

    def add_io_counts(self, retries: Counter, failures: Counter) -> None:
        self.io_retries += retries
        self.io_failures += failures

    def add_rows(self, rows: Iterable[dict], labelled: bool = True) -> None:
        """Count rows (with the columns of ROW_COLUMNS at least)."""
        for row in rows:
            self.rows += 1
            self.labelled += labelled
            if row["error"] is not None:
                kind = error_kind(row["error"])
                self.errors[kind] += 1
                examples = self.error_examples.setdefault(kind, [])
                _insert_top(examples, row["path"], str, ERROR_EXAMPLES)
            if row["label"] is None:
                continue
            self.labels[row["label"]] += 1
            for column in SCORE_COLUMNS:
                self.score_bins[column][score_bin(row[column])] += 1
            if row["duration_s"] is not None:
                self.duration_bins[duration_bin(row["duration_s"])] += 1
            if row["sample_rate"] is not None:
                self.sample_rates[row["sample_rate"]] += 1
            _insert_top(
                self.least_confident,
                row,
                _least_sure_first,
                LISTEN_LEAST_CONFIDENT,
                _report_columns,
            )
            _insert_top(
                self.surest.setdefault(row["label"], []),
                row,
                _surest_first,
                LISTEN_PER_LABEL + LISTEN_LEAST_CONFIDENT,
                _report_columns,
            )

    def add_events(self, events: Iterable[dict], durations: dict[str, float | None]) -> None:
        """Count keyword events (EVENT_COLUMNS) of files whose durations are given."""
        by_file: dict[str, list[dict]] = {}
        for event in events:
            by_file.setdefault(event["path"], []).append(
                {column: event[column] for column in EVENT_COLUMNS}
            )
            self.events += 1
        self.files_with_events += len(by_file)
        files = [
            {"path": path, "duration_s": durations.get(path), "events": file_events}
            for path, file_events in by_file.items()
        ]
        self.busiest = _merge_top(self.busiest, files, _busiest_first, TIMELINE_FILES)

    def merge(self, other: "Tally") -> "Tally":
        self.rows += other.rows
        self.labelled += other.labelled
        self.labels += other.labels
        self.errors += other.errors
        for kind, examples in other.error_examples.items():
            mine = self.error_examples.get(kind, [])
            self.error_examples[kind] = sorted(mine + examples)[:ERROR_EXAMPLES]
        for column, counts in other.score_bins.items():
            self.score_bins[column] = add_counts(self.score_bins[column], counts)
        self.duration_bins = add_counts(self.duration_bins, other.duration_bins)
        self.sample_rates += other.sample_rates
        self.least_confident = _merge_top(
            self.least_confident, other.least_confident, _least_sure_first, LISTEN_LEAST_CONFIDENT
        )
        for label, rows in other.surest.items():
            self.surest[label] = _merge_top(
                self.surest.get(label, []),
                rows,
                _surest_first,
                LISTEN_PER_LABEL + LISTEN_LEAST_CONFIDENT,
            )
        self.events += other.events
        self.files_with_events += other.files_with_events
        self.busiest = _merge_top(self.busiest, other.busiest, _busiest_first, TIMELINE_FILES)
        self.groups += other.groups
        self.slices_done += other.slices_done
        self.listed += other.listed
        self.received += other.received
        self.add_io_counts(other.io_retries, other.io_failures)
        return self

    @property
    def kept(self) -> int:
        return self.rows - self.labelled

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Tally":
        fields = json.loads(text)
        for name in ("labels", "errors", "io_failures", "io_retries"):
            fields[name] = Counter(fields.get(name, {}))
        fields["sample_rates"] = Counter({int(k): v for k, v in fields["sample_rates"].items()})
        return cls(**fields)


def _busiest_first(file: dict) -> tuple:
    return -len(file["events"]), file["path"]
