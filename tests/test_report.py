"""The HTML report: what it computes, and the page itself in a real browser (headless chromium)."""

import base64
import io
import json
import re
import shutil
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from websockets.sync.client import connect

from pipeline import output, report, tally
from pipeline.cli import main
from tests.servers import free_port, local_server

# Added at the end of the page: decodes every audio element's data once the page has loaded, and
# says what it found in an element the test reads back.
CHECK_SCRIPT = """<script>
window.addEventListener("load", async () => {
  let decoded = 0;
  const failures = [];
  for (const audio of document.querySelectorAll("audio")) {
    try {
      const data = await (await fetch(audio.src)).arrayBuffer();
      const buffer = await new OfflineAudioContext(1, 16000, 16000).decodeAudioData(data);
      if (buffer.length > 0) decoded += 1;
    } catch (error) { failures.push(String(error)); }
  }
  const result = document.createElement("pre");
  result.id = "check";
  result.textContent = JSON.stringify({decoded: decoded, failures: failures});
  document.body.appendChild(result);
});
</script>"""
CHROMIUM_TIMEOUT_S = 60


def test_bins_count_every_value_once_with_the_ends_included():
    assert [tally.score_bin(s) for s in (0.0, 0.049, 0.05, 0.5, 0.999, 1.0)] == [
        0,
        0,
        1,
        10,
        19,
        19,
    ]
    durations = (0.0, 0.49, 0.5, 1.0, 3_599.0, 86_400.0, 1e6)
    assert [tally.duration_bin(d) for d in durations] == [0, 0, 1, 2, 10, 13, 13]


def row(path: str, label: str | None, score: float = 0.9, error: str | None = None) -> dict:
    scores = dict.fromkeys(("score_yes", "score_no", "score_unknown", "score_silence"), 0.0)
    if label is not None:
        scores[f"score_{label}"] = score
    return {
        "path": path, "label": label, "error": error, "window_start_s": 0.0,
        "duration_s": None if error else 1.0, "sample_rate": None if error else 16_000, **scores,
    }  # fmt: skip


def tally_of(rows: list[dict]) -> tally.Tally:
    counted = tally.Tally()
    counted.add_rows(rows)
    return counted


def test_tallies_of_parts_merge_into_the_tally_of_the_whole():
    rng = np.random.default_rng(0)
    labels = ["yes", "no", "unknown", "silence", None]
    rows = [
        row(f"f{i:03d}", label, rng.uniform(), None if label else f"kind{i % 3}: broken")
        for i, label in enumerate(rng.choice(labels, 300))
    ]
    events = [
        {"path": f"f{i:03d}", "label": "yes", "start_s": 0.0, "end_s": 1.0} for i in range(40)
    ]
    whole = tally_of(rows)
    whole.add_events(events, {})
    merged = tally.Tally()
    for start in range(0, 300, 7):
        part = tally_of(rows[start : start + 7])
        part.add_events([e for e in events if start <= int(e["path"][1:]) < start + 7], {})
        merged.merge(part)
    assert merged == whole
    assert tally.Tally.from_json(whole.to_json()) == whole
    assert whole.rows == 300 and sum(whole.labels.values()) + sum(whole.errors.values()) == 300


def test_files_to_listen_to_are_the_least_sure_then_sure_examples_of_each_label():
    rows = [row(f"u{i}", "unknown", 0.5 + i / 100) for i in range(20)]
    rows += [row("y1", "yes", 0.99), row("y2", "yes", 0.995), row("bad", None, error="x: y")]
    chosen = report.files_to_listen_to(tally_of(rows))
    least = [item.row["path"] for item in chosen if item.reason == "least confident"]
    assert least == [f"u{i}" for i in range(tally.LISTEN_LEAST_CONFIDENT)]
    assert [item.row["path"] for item in chosen if item.reason == "a sure yes"] == ["y2", "y1"]
    assert "bad" not in {item.row["path"] for item in chosen}


def test_errors_are_grouped_by_kind_with_a_few_examples():
    rows = [row(f"e{i}", None, error=f"empty_file: {i}") for i in range(5)]
    rows.append(row("t", None, error="too_long: the cap"))
    expected = {"empty_file": ["e0", "e1", "e2"], "too_long": ["t"]}
    assert report.errors_by_kind(tally_of(rows)) == expected


def test_the_inline_png_and_wav_decode():
    audio = np.sin(np.arange(16_000) / 5).astype(np.float32) * 0.5
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    png = report.grey_png(pixels)
    assert png.startswith(b"\x89PNG") and png.endswith(b"IEND\xaeB`\x82")
    rows = zlib.decompress(png[png.index(b"IDAT") + 4 : -16])  # IDAT's data: before CRC, IEND
    assert rows == b"".join(b"\x00" + line.tobytes() for line in pixels)  # filter byte, pixels
    wav = report.wav_data_uri(audio).split(",", 1)[1]
    decoded, rate = soundfile.read(io.BytesIO(base64.b64decode(wav)), dtype="float32")
    assert rate == 16_000 and np.abs(decoded - audio).max() < 1e-4


@pytest.fixture(scope="module")
def run_with_report(recordings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["--input", str(recordings), "--output", str(out / "labels")]
    assert main([*argv, "--events", str(out / "events"), "--quiet"]) == 0
    return out / "labels"


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load the page in headless chromium (DevTools protocol on 127.0.0.1, stopped by PID):
    the check script's findings, and every console error, uncaught exception or browser log
    error on the way."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>", 1))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is needed (apt-get install chromium); .ci/run installs it")
    port = free_port()
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}", "about:blank",
    ]  # fmt: skip
    with local_server(command, port, tmp_path / "chromium.log"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in json.load(response) if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as browser:
            return DevTools(browser).load_and_check(checked.as_uri())


class DevTools:
    """Just enough of the DevTools protocol: send a command, collect problems from events."""

    def __init__(self, browser):
        self._browser = browser
        self._next_id = 0
        self.problems: list[str] = []

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self._browser.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._browser.recv(timeout=CHROMIUM_TIMEOUT_S))
            if message.get("id") == self._next_id:
                return message.get("result", {})
            self._note(message)

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {params['exceptionDetails']}")
        elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.problems.append(f"console: {params['args']}")
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.problems.append(f"log: {params['entry']['text']}")

    def load_and_check(self, url: str) -> tuple[dict, list[str]]:
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + CHROMIUM_TIMEOUT_S
        while time.monotonic() < deadline:
            found = self.call(
                "Runtime.evaluate",
                expression="document.getElementById('check')?.textContent ?? ''",
            )["result"]["value"]
            if found:
                return json.loads(found), self.problems
            time.sleep(0.2)
        raise TimeoutError(f"the page's check did not finish; problems so far {self.problems}")


def test_the_page_loads_in_a_browser_without_errors_and_its_audio_decodes(
    run_with_report, tmp_path
):
    page = run_with_report / output.REPORT_FILE
    checked, problems = open_in_chromium(page, tmp_path)
    players = page.read_text().count("<audio ")
    assert problems == []
    assert players > 0 and checked == {"decoded": players, "failures": []}


def test_the_page_counts_equal_the_summary_and_it_is_self_contained(run_with_report):
    text = (run_with_report / output.REPORT_FILE).read_text()
    summary = json.loads((run_with_report / output.SUMMARY_FILE).read_text())
    shown = dict(re.findall(r'data-label="(\w+)">([\d,]+)<', text))
    for label in ("yes", "no", "unknown", "silence"):
        assert int(shown[label].replace(",", "")) == summary["labels"].get(label, 0)
    assert int(shown["error"]) == summary["errors"]
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from anywhere
    assert "<h2>Keyword events</h2>" in text


def test_the_page_says_what_the_thresholds_apply_to_and_each_deciding_score(run_with_report):
    text = (run_with_report / output.REPORT_FILE).read_text()
    assert "(on keyword scores: probabilities moved by the windows around them)" in text
    assert text.count("keyword score ") == text.count("<audio ") > 0


def test_rows_written_without_a_later_column_read_it_as_none(tmp_path):
    """A labels file of a version before `keyword_score` still gives the report its rows."""
    older = [column for column in tally.ROW_COLUMNS if column != "keyword_score"]
    path = tmp_path / "labels-old.parquet"
    pq.write_table(pa.Table.from_pylist([dict.fromkeys(older, None) | {"path": "a.wav"}]), path)
    (row,) = output.read_file_columns(str(path), tally.ROW_COLUMNS)
    assert row["path"] == "a.wav" and row["keyword_score"] is None
    assert set(row) == set(tally.ROW_COLUMNS)


def test_report_rebuilds_the_page_of_an_existing_output(run_with_report, capsys):
    page = run_with_report / output.REPORT_FILE
    before = page.read_text()
    page.unlink()
    assert main(["report", str(run_with_report)]) == 0
    assert page.read_text() == before
    assert main(["report", str(run_with_report.parent / "nothing-here")]) == 2


def test_the_page_stays_small_for_many_files(run_with_report):
    """100,000 rows (their files listed but gone, so no players: those are capped apart)."""
    summary = json.loads((run_with_report / output.SUMMARY_FILE).read_text())
    rng = np.random.default_rng(0)
    rows = [
        row(f"/gone/{i:06d}.wav", ["yes", "no", "unknown", "silence"][i % 4], rng.uniform())
        | {"duration_s": 1.0, "sample_rate": 16_000}
        for i in range(100_000)
    ]
    page = report.render(summary, tally_of(rows), with_events=False)
    assert len(page) < 1_000_000 and page.count("cannot be read now") == 24
