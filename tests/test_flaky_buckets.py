"""Buckets under load: moto's S3 server and gcp-storage-emulator behind a proxy that fails a
fifth of all requests (tests.fault_proxy: three in four 503 SlowDown, one in four dropped
connections, seeded). Every file still gets exactly one row, with the labels and scores of a
local run; a file that cannot be fetched gets an error row and the run goes on."""

import csv
import io
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import soundfile
from google.cloud import storage as gcs

from pipeline.cli import main
from tests.helpers import assert_same_rows, read_output
from tests.servers import free_port, local_server
from tests.test_buckets import offline_cloud, s3_options  # noqa: F401

FILES = 100
FAILURE_RATE = 0.2
FORBIDDEN = "mixed/forbidden-"  # objects named so are answered 403 by the proxy
REFUSED = "retry/refused-"  # and these 503, every time
ROOT = Path(__file__).resolve().parent.parent


def proxy(upstream: str, failure_rate: float = FAILURE_RATE) -> tuple[list[str], int]:
    port = free_port()
    command = [sys.executable, "-m", "tests.fault_proxy", "--port", str(port)]
    command += ["--upstream", upstream, "--failure-rate", str(failure_rate), "--seed", "0"]
    command += ["--forbid", f"GET /audio-in/{FORBIDDEN}", "--refuse", f"GET /audio-in/{REFUSED}"]
    command += ["--forbid", f"/b/audio-in/o/{FORBIDDEN}", "--refuse", f"/b/audio-in/o/{REFUSED}"]
    return command, port


def proxy_stats(endpoint: str) -> dict:
    with urllib.request.urlopen(f"{endpoint}/_fault_proxy/stats") as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory) -> dict[str, bytes]:
    """FILES real test-split clips as WAV bytes, by name: every fourth of them a yes or a no."""
    with open(data_dir / "manifest.csv") as file:
        test = [row for row in csv.DictReader(file) if row["split"] == "test"]
    keywords = [row for word in ("yes", "no") for row in test if row["word"] == word][::9]
    keywords = keywords[: FILES // 4]
    others = [row for row in test if row["word"] not in ("yes", "no")][::7][: FILES - len(keywords)]
    chosen = {}
    for index, row in enumerate(keywords + others):
        audio, sample_rate = soundfile.read(data_dir / row["path"], dtype="float32")
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
        chosen[f"{index:04d}_{row['word']}.wav"] = buffer.getvalue()
    return chosen


@pytest.fixture(scope="module")
def local_rows(clips, tmp_path_factory) -> dict[str, dict]:
    """The rows of a local run over the same files, by file name."""
    folder = tmp_path_factory.mktemp("flaky_local")
    for name, contents in clips.items():
        (folder / "clips" / name).parent.mkdir(exist_ok=True)
        (folder / "clips" / name).write_bytes(contents)
    assert main(["--input", str(folder / "clips"), "--output", str(folder / "out"), "--quiet"]) == 0
    return {row["path"].rsplit("/", 1)[1]: row for row in read_output(folder / "out")}


@pytest.fixture(scope="module")
def flaky_s3(offline_cloud, clips) -> Iterator[tuple[str, object]]:  # noqa: F811
    """(the proxy's endpoint, a client of moto's own): the clips under s3://audio-in/clips/."""
    port = free_port()
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    command, proxy_port = proxy(endpoint)
    with local_server(moto, port), local_server(command, proxy_port, cwd=ROOT):
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in ("audio-in", "labels-out"):
            client.create_bucket(Bucket=bucket)
        for name, contents in clips.items():
            client.put_object(Bucket="audio-in", Key=f"clips/{name}", Body=contents)
        yield f"http://127.0.0.1:{proxy_port}", client


def rows_in(read, keys: list[str]) -> dict[str, dict]:
    """The rows of the Parquet objects `keys` (read by `read`), by file name."""
    rows = []
    for key in keys:
        rows += pq.read_table(io.BytesIO(read(key))).to_pylist()
    named = {row["path"].rsplit("/", 1)[1]: row for row in rows}
    assert len(named) == len(rows)
    return named


def assert_as_local(rows: dict[str, dict], local_rows: dict[str, dict]) -> None:
    names = sorted(local_rows)
    assert sorted(rows) == names
    assert not [row for row in rows.values() if row["error"] is not None]
    assert_same_rows(
        [{**rows[name], "path": name} for name in names],
        [{**local_rows[name], "path": name} for name in names],
        tolerance=1e-6,
    )


def s3_summary(client, prefix: str) -> dict:
    body = client.get_object(Bucket="labels-out", Key=f"{prefix}/_summary.json")["Body"].read()
    return json.loads(body)


def s3_rows(client, prefix: str, summary: dict) -> dict[str, dict]:
    def read(name: str) -> bytes:
        return client.get_object(Bucket="labels-out", Key=f"{prefix}/{name}")["Body"].read()

    return rows_in(read, summary["parquet_files"])


def test_a_fifth_of_s3_requests_failing_loses_nothing(flaky_s3, clips, local_rows):
    """Listing, reading, writing rows and events, the commit, then a rerun from a manifest in
    the bucket with --skip_existing, all through the failing proxy."""
    endpoint, client = flaky_s3
    before = proxy_stats(endpoint)
    argv = ["--output", "s3://labels-out/flaky", "--events", "s3://labels-out/flaky-events"]
    argv += ["--quiet", *s3_options(endpoint)]
    assert main(["--input", "s3://audio-in/clips/", *argv]) == 0
    summary = s3_summary(client, "flaky")
    assert summary["files"] == FILES and summary["errors"] == 0
    assert_as_local(s3_rows(client, "flaky", summary), local_rows)
    events = s3_summary(client, "flaky-events")
    assert events["run_id"] == summary["run_id"]
    stats = proxy_stats(endpoint)
    failed = {fate: stats[fate] - before[fate] for fate in ("slow_down", "dropped")}
    # At least a GET per file, a fifth of requests failing: three in four 503, one in four dropped.
    assert failed["slow_down"] > FILES // 10 and failed["dropped"] > FILES // 40, failed
    assert sum(summary["io_retries"].values()) > FILES // 10, summary["io_retries"]
    assert summary["io_retries"].get("s3 GetObject", 0) > 0
    report = client.get_object(Bucket="labels-out", Key="flaky/_report.html")["Body"].read()
    assert b"bucket requests retried" in report

    manifest = "path\n" + "".join(f"clips/{name}\n" for name in clips)
    client.put_object(Bucket="audio-in", Key="clips.csv", Body=manifest.encode())
    assert main(["--input", "s3://audio-in/clips.csv", "--skip_existing", *argv]) == 0
    rerun = s3_summary(client, "flaky")
    assert rerun["files"] == FILES and rerun["files_kept_from_earlier_output"] == FILES
    assert_as_local(s3_rows(client, "flaky", rerun), local_rows)
    assert s3_summary(client, "flaky-events")["run_id"] == rerun["run_id"]


def test_a_forbidden_object_is_an_error_row_and_the_run_goes_on(flaky_s3, clips, local_rows):
    endpoint, client = flaky_s3
    names = sorted(clips)[:3]
    for name in names[:2]:
        client.put_object(Bucket="audio-in", Key=f"mixed/{name}", Body=clips[name])
    client.put_object(Bucket="audio-in", Key=f"{FORBIDDEN}{names[2]}", Body=clips[names[2]])
    argv = ["--input", "s3://audio-in/mixed/", "--output", "s3://labels-out/forbidden"]
    forbidden_before = proxy_stats(endpoint)["forbidden"]
    assert main([*argv, "--quiet", *s3_options(endpoint)]) == 0
    assert proxy_stats(endpoint)["forbidden"] == forbidden_before + 1  # never tried again
    summary = s3_summary(client, "forbidden")
    rows = s3_rows(client, "forbidden", summary)
    assert [rows[name]["label"] for name in names[:2]] == [
        local_rows[name]["label"] for name in names[:2]
    ]
    error = rows[f"forbidden-{names[2]}"]["error"]
    assert error.startswith("unreadable_file: AccessDenied"), error
    assert summary["errors_by_kind"] == {"unreadable_file": 1}


def test_a_file_that_cannot_be_fetched_is_read_failed_and_retried_by_the_next_run(flaky_s3, clips):
    """A GET answered 503 every time: after the retries the file's row is `read_failed`, which
    --skip_existing tries again even with --keep_error_rows (the broken file's row is kept).
    Through a proxy that fails nothing else: with the few retries that make this test short,
    a fifth of all requests failing could stop the commit too (exit 4, by design)."""
    _, client = flaky_s3
    moto_endpoint = client.meta.endpoint_url  # the same bucket, not through the flaky proxy
    name = sorted(clips)[0]
    client.put_object(Bucket="audio-in", Key=f"{REFUSED}{name}", Body=clips[name])
    client.put_object(Bucket="audio-in", Key="retry/broken.wav", Body=b"not audio" * 10)
    argv = ["--input", "s3://audio-in/retry/", "--output", "s3://labels-out/refused"]
    argv += ["--quiet", "--max_error_rate", "1", "--io_retries", "2", "--io_retry_deadline_s", "2"]
    command, port = proxy(moto_endpoint, failure_rate=0.0)
    with local_server(command, port, cwd=ROOT):
        assert main([*argv, *s3_options(f"http://127.0.0.1:{port}")]) == 0
    summary = s3_summary(client, "refused")
    rows = s3_rows(client, "refused", summary)
    name = f"refused-{name}"
    assert rows[name]["error"].startswith("read_failed: ") and "SlowDown" in rows[name]["error"]
    assert rows["broken.wav"]["error"].startswith("unreadable_audio: ")
    assert summary["io_transient_failures"]["s3 GetObject"] >= 3

    rerun = [*argv, "--skip_existing", "--keep_error_rows", *s3_options(moto_endpoint)]
    assert main(rerun) == 0
    summary = s3_summary(client, "refused")
    rows = s3_rows(client, "refused", summary)
    assert (summary["files_labelled_this_run"], summary["files_kept_from_earlier_output"]) == (1, 1)
    assert rows[name]["error"] is None and rows[name]["label"] is not None
    assert rows["broken.wav"]["error"].startswith("unreadable_audio: ")


@pytest.fixture(scope="module")
def flaky_gcs(offline_cloud, clips) -> Iterator[tuple[str, gcs.Client]]:  # noqa: F811
    """(the proxy's endpoint, a client of the emulator's own): the clips under
    gs://audio-in/clips/, and STORAGE_EMULATOR_HOST set to the proxy."""
    port = free_port()
    emulator = [sys.executable, "-m", "gcp_storage_emulator", "start"]
    emulator += ["--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    endpoint = f"http://127.0.0.1:{port}"
    command, proxy_port = proxy(endpoint)
    proxy_endpoint = f"http://127.0.0.1:{proxy_port}"
    with (
        local_server(emulator, port),
        local_server(command, proxy_port, cwd=ROOT),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        client = gcs.Client()
        for bucket in ("audio-in", "labels-out"):
            client.create_bucket(bucket)
        for name, contents in clips.items():
            client.bucket("audio-in").blob(f"clips/{name}").upload_from_string(contents)
        patch.setenv("STORAGE_EMULATOR_HOST", proxy_endpoint)
        yield proxy_endpoint, client


def test_a_fifth_of_gcs_requests_failing_loses_nothing(flaky_gcs, local_rows):
    endpoint, client = flaky_gcs
    before = proxy_stats(endpoint)
    argv = ["--input", "gs://audio-in/clips/", "--output", "gs://labels-out/flaky"]
    assert main([*argv, "--events", "gs://labels-out/flaky-events", "--quiet"]) == 0
    bucket = client.bucket("labels-out")

    def read(name: str) -> bytes:
        return bucket.blob(f"flaky/{name}").download_as_bytes()

    summary = json.loads(read("_summary.json"))
    assert summary["files"] == FILES and summary["errors"] == 0
    assert_as_local(rows_in(read, summary["parquet_files"]), local_rows)
    stats = proxy_stats(endpoint)
    assert stats["slow_down"] - before["slow_down"] > FILES // 10
    assert stats["dropped"] - before["dropped"] > FILES // 40
    assert summary["io_retries"].get("gcs request", 0) > 0
