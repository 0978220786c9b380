"""`_report.html`: one self-contained page that shows a run's output, written with every run and
rebuilt by `yesno-label report <output>`.

Everything is inline (styles, SVG charts, PNG spectrograms and WAV players as data URIs), so the
page opens offline and can be mailed. What it shows comes from the run's `Tally` (added up inside
the job, or rebuilt from the dataset's files a group at a time), so the page costs the same for
a hundred files or a hundred million.
"""

import base64
import html
import io
import struct
import zlib
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import soundfile
from apache_beam.io.filesystems import FileSystems

from model.audio import read_window
from model.contract import CLIP_SAMPLES, LABELS, SAMPLE_RATE
from pipeline import output
from pipeline.labels import SCORE_COLUMNS
from pipeline.output import REPORT_FILE
from pipeline.storage import open_input
from pipeline.tally import (
    DURATION_EDGES_S,
    EVENT_COLUMNS,
    HISTOGRAM_BINS,
    LISTEN_PER_LABEL,
    ROW_COLUMNS,
    Tally,
)

SPECTROGRAM_BINS = 64
LABEL_COLOURS = {"yes": "#1b9e77", "no": "#d95f02", "unknown": "#7570b3", "silence": "#999999"}


@dataclass(frozen=True)
class Listening:
    """A file worth a listen: why, its row, and the window that decided its label."""

    reason: str
    row: dict


def files_to_listen_to(tally: Tally) -> list[Listening]:
    """The least confident labels, then the most confident few of each label."""
    chosen = [Listening("least confident", row) for row in tally.least_confident]
    seen = {listening.row["path"] for listening in chosen}
    for label in LABELS:
        surest = [row for row in tally.surest.get(label, []) if row["path"] not in seen]
        chosen.extend(Listening(f"a sure {label}", row) for row in surest[:LISTEN_PER_LABEL])
    return chosen


def errors_by_kind(tally: Tally) -> dict[str, list[str]]:
    """Example paths of each error kind, most common kind first (then by name)."""
    kinds = sorted(tally.errors, key=lambda kind: (-tally.errors[kind], kind))
    return {kind: tally.error_examples[kind] for kind in kinds}


def deciding_window(row: dict) -> np.ndarray:
    """The 1 s (or shorter file's) 16 kHz mono audio of the window that decided a row's label,
    read from the file again; empty if it cannot be read now."""
    try:
        with open_input(row["path"]) as file:
            return read_window(file, row["window_start_s"], CLIP_SAMPLES / SAMPLE_RATE)
    except Exception:  # noqa: BLE001 - the file may have moved since: the page says so
        return np.zeros(0, np.float32)


def wav_data_uri(audio: np.ndarray) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, "PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def spectrogram_png_uri(audio: np.ndarray) -> str:
    """A log-magnitude spectrogram (25 ms frames every 10 ms, 0-8 kHz), as a grey PNG."""
    frame, hop = 400, 160
    if len(audio) < frame:
        audio = np.pad(audio, (0, frame - len(audio)))
    count = 1 + (len(audio) - frame) // hop
    frames = np.stack([audio[i * hop : i * hop + frame] for i in range(count)])
    power = np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1)) ** 2
    edges = np.linspace(0, power.shape[1], SPECTROGRAM_BINS + 1).astype(int)
    bands = np.stack([power[:, a:b].mean(axis=1) for a, b in pairwise(edges)], axis=1)
    decibels = 10 * np.log10(bands + 1e-10)
    scaled = np.clip((decibels - (decibels.max() - 80)) / 80, 0, 1)
    pixels = (255 * (1 - scaled.T[::-1])).astype(np.uint8)  # low frequencies at the bottom
    return "data:image/png;base64," + base64.b64encode(grey_png(pixels)).decode()


def grey_png(pixels: np.ndarray) -> bytes:
    """A greyscale PNG of a uint8 image [height, width], with zlib alone."""
    height, width = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    image = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + image


def bar_chart_svg(counts: list[int], labels: list[str], colour: str = "#4477aa") -> str:
    width, height, bar = 360, 120, 360 / max(len(counts), 1)
    top = max(max(counts, default=0), 1)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - count / top * height:.1f}" width="{bar - 1:.1f}"'
        f' height="{count / top * height:.1f}" fill="{colour}"><title>{html.escape(name)}:'
        f" {count:,}</title></rect>"
        for i, (count, name) in enumerate(zip(counts, labels, strict=True))
    )
    return (
        f'<svg width="{width}" height="{height + 16}" role="img">{bars}'
        f'<text x="0" y="{height + 14}" font-size="11">{html.escape(labels[0])}</text>'
        f'<text x="{width}" y="{height + 14}" font-size="11" text-anchor="end">'
        f"{html.escape(labels[-1])}</text></svg>"
    )


def score_histograms(tally: Tally) -> str:
    parts = []
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    names = [f"{a:.2f}-{b:.2f}" for a, b in pairwise(edges)]
    for label, column in zip(LABELS, SCORE_COLUMNS, strict=True):
        parts.append(
            f"<figure><figcaption>{column}</figcaption>"
            f"{bar_chart_svg(tally.score_bins[column], names, LABEL_COLOURS[label])}</figure>"
        )
    return "".join(parts)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def duration_and_rate_charts(tally: Tally) -> str:
    edges = [format_seconds(edge) for edge in DURATION_EDGES_S]
    names = [f"{a}-{b}" for a, b in pairwise(edges)] + [f"{edges[-1]} or more"]
    rates = sorted(tally.sample_rates)
    rate_counts = [tally.sample_rates[rate] for rate in rates] or [0]
    rate_names = [f"{rate:,} Hz" for rate in rates] or ["none"]
    return (
        f"<figure><figcaption>duration</figcaption>"
        f"{bar_chart_svg(tally.duration_bins, names)}</figure>"
        f"<figure><figcaption>sample rate</figcaption>"
        f"{bar_chart_svg(rate_counts, rate_names)}"
        "</figure>"
    )


def timeline_svg(events: list[dict], duration_s: float) -> str:
    width, height = 600, 18
    scale = width / max(duration_s, 1e-3)
    marks = []
    for event in events:
        x, span = event["start_s"] * scale, max((event["end_s"] - event["start_s"]) * scale, 2)
        marks.append(
            f'<rect x="{x:.1f}" y="2" width="{span:.1f}" height="{height - 4}"'
            f' fill="{LABEL_COLOURS[event["label"]]}"><title>{event["label"]}'
            f" {event['start_s']:.2f}-{event['end_s']:.2f} s</title></rect>"
        )
    return (
        f'<svg width="{width}" height="{height}" role="img"><rect width="{width}"'
        f' height="{height}" fill="#f3f3f3"/>{"".join(marks)}</svg>'
    )


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; }
figure { display: inline-block; margin: 0 1em 1em 0; }
img { display: block; height: 64px; width: 200px; image-rendering: pixelated; }
"""


def thresholds_text(decision: dict) -> str:
    """The model's thresholds, and what they apply to."""
    text = ", ".join(f"{label} {value:.3f}" for label, value in decision["thresholds"].items())
    if "context" in decision:
        return text + " (on keyword scores: probabilities moved by the windows around them)"
    return text + " (on keyword probabilities)"


def retries_text(summary: dict) -> str:
    """Transient failures and retries of bucket requests, per operation, the most first."""
    failures, retried = summary["io_transient_failures"], summary.get("io_retries", {})
    return f"{sum(retried.values()):,} of {sum(failures.values()):,} transient failures: " + (
        ", ".join(
            f"{operation} {retried.get(operation, 0):,} of {count:,}"
            for operation, count in sorted(failures.items(), key=lambda item: -item[1])
        )
    )


def run_section(summary: dict) -> str:
    fields = [
        ("input", summary["input"]),
        ("output", summary["output"]),
        ("model", f"{summary['model_version']} ({summary['runtime']})"),
        ("thresholds", thresholds_text(summary["decision"])),
        ("runner", summary["runner"]),
        ("started, ended", f"{summary['started_at']}, {summary['ended_at']}"),
        ("wall time", f"{summary['wall_time_s']:.1f} s, {summary['files_per_s']:,.1f} files/s"),
        ("files", f"{summary['files']:,}, of which kept from the earlier output"
                  f" {summary['files_kept_from_earlier_output']:,}"),
    ]  # fmt: skip
    if summary.get("io_transient_failures"):
        fields.append(("bucket requests retried", retries_text(summary)))
    cells = "".join(
        f"<tr><th>{name}</th><td>{html.escape(str(value))}</td></tr>" for name, value in fields
    )
    return f"<h2>The run</h2><table>{cells}</table>"


def counts_section(tally: Tally) -> str:
    cells = "".join(
        f'<tr><td>{label}</td><td class="n" data-label="{label}">{tally.labels[label]:,}</td></tr>'
        for label in LABELS
    )
    errors = sum(tally.errors.values())
    cells += f'<tr><td>errors</td><td class="n" data-label="error">{errors:,}</td></tr>'
    kind_cells = "".join(
        f'<tr><td>{html.escape(kind)}</td><td class="n">{tally.errors[kind]:,}</td>'
        f"<td>{'<br>'.join(html.escape(path) for path in paths)}</td></tr>"
        for kind, paths in errors_by_kind(tally).items()
    )
    errors_table = (
        f"<table><tr><th>kind</th><th>files</th><th>examples</th></tr>{kind_cells}</table>"
        if kind_cells
        else "<p>none</p>"
    )
    return f"<h2>Labels</h2><table>{cells}</table><h2>Errors by kind</h2>{errors_table}"


def listening_section(tally: Tally) -> str:
    lines = []
    for item in files_to_listen_to(tally):
        row = item.row
        audio = deciding_window(row)
        player = (
            f'<audio controls preload="none" src="{wav_data_uri(audio)}"></audio>'
            f'<img alt="spectrogram" src="{spectrogram_png_uri(audio)}">'
            if len(audio)
            else "<em>the file cannot be read now</em>"
        )
        scores = " ".join(f"{label} {row[f'score_{label}']:.3f}" for label in LABELS)
        if row.get("keyword_score") is not None:
            scores += f"<br>keyword score {row['keyword_score']:.3f}"
        lines.append(
            f"<tr><td>{html.escape(item.reason)}</td><td>{html.escape(row['path'])}</td>"
            f"<td>{row['label']}</td><td>{scores}<br>window at {row['window_start_s']:.1f} s</td>"
            f"<td>{player}</td></tr>"
        )
    return (
        "<h2>Files worth a listen</h2><p>Each player holds the window that decided the label."
        "</p><table><tr><th>why</th><th>file</th><th>label</th><th>scores</th><th>listen</th>"
        f"</tr>{''.join(lines)}</table>"
    )


def events_section(tally: Tally) -> str:
    lines = "".join(
        f'<tr><td>{html.escape(file["path"])}</td><td class="n">{len(file["events"])}</td>'
        f"<td>{timeline_svg(file['events'], file['duration_s'] or 0.0)}</td></tr>"
        for file in tally.busiest
    )
    return (
        f"<h2>Keyword events</h2><p>{tally.events:,} events in {tally.files_with_events:,}"
        f" files; the {len(tally.busiest)} files with the most:</p><table><tr><th>file</th>"
        f"<th>events</th><th>timeline (yes green, no orange)</th></tr>{lines}</table>"
    )


def render(summary: dict, tally: Tally, with_events: bool) -> str:
    """The page, from the run's summary and its tally (with --events, their timelines too)."""
    sections = [
        run_section(summary),
        counts_section(tally),
        f"<h2>Scores</h2>{score_histograms(tally)}",
        f"<h2>Recordings</h2>{duration_and_rate_charts(tally)}",
        listening_section(tally),
        events_section(tally) if with_events else "",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>yesno-label report</title><style>{STYLE}</style></head><body>"
        f"<h1>yesno-label report</h1>{''.join(sections)}</body></html>\n"
    )


def write_report(dataset_dir: str, summary: dict, tally: Tally, with_events: bool) -> None:
    """Write `_report.html` into a dataset directory (the staging one, before its commit)."""
    with FileSystems.create(FileSystems.join(dataset_dir, REPORT_FILE)) as file:
        file.write(render(summary, tally, with_events).encode())


def tally_dataset(output_dir: str, summary: dict, events_dir: str | None) -> Tally:
    """The tally of a committed dataset, read a group at a time: each labels file its summary
    lists, and with events the events file of the same group."""
    tally = Tally()
    for path in output.summary_files(output_dir, summary):
        rows = output.read_file_columns(path, ROW_COLUMNS)
        tally.add_rows(rows)
        if events_dir is None:
            continue
        name = path.rsplit("/", 1)[-1].replace(output.PARQUET_PREFIX, output.EVENTS_PREFIX, 1)
        events_file = FileSystems.join(events_dir, name)
        if FileSystems.exists(events_file):
            durations = {row["path"]: row["duration_s"] for row in rows}
            tally.add_events(output.read_file_columns(events_file, EVENT_COLUMNS), durations)
    return tally


def rebuild_report(output_dir: str) -> str:
    """Write `<output>/_report.html` again from a committed output; returns its path."""
    summary = output.read_summary(output_dir)
    if summary is None:
        raise FileNotFoundError(f"{output_dir} has no {output.SUMMARY_FILE}: not an output")
    events_dir = (summary.get("events") or {}).get("output")
    tally = tally_dataset(output_dir, summary, events_dir)
    write_report(output_dir, summary, tally, events_dir is not None)
    return FileSystems.join(output_dir, REPORT_FILE)
