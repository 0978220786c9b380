"""Ctrl-C (SIGINT) and SIGTERM stop a run within 10 s, with exit code 130 or 143, commit
nothing and leave the previous output as it was, locally and on S3 (moto's server behind
tests.fault_proxy, which holds one chosen request so the signal lands while the run waits on
it: listing the input, reading a recording, committing)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from pipeline import output
from tests.helpers import read_output
from tests.servers import free_port, local_server, offline_cloud_environment

ROOT = Path(__file__).resolve().parent.parent
STOP_LIMIT_S = 10.0
LOCAL_FILES = 1_500
HOLDS = (  # requests the proxy holds: the moments a bucket run is stopped at
    "GET /audio-in?list-type=2&prefix=stop-listing/",
    "GET /audio-in/stop-labelling/0010.wav",
    "PUT /labels-out/stop-commit/_summary.json",
)


def run_until(argv: list[str], ready: Callable[[], bool], env: dict | None = None):
    """Start yesno-label and wait until `ready()`; returns the running process."""
    command = [sys.executable, "-m", "pipeline.cli", *argv, "--quiet"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended before the moment: {process.communicate()}")
        assert time.monotonic() < deadline, "the run never reached the moment"
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen, signum: int, again_after_s: float | None = None):
    """Send `signum` (and once more after `again_after_s`); (exit code, seconds to exit,
    stderr)."""
    process.send_signal(signum)
    sent = time.monotonic()
    if again_after_s is not None:
        time.sleep(again_after_s)
        if process.poll() is None:
            process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, stderr


@pytest.fixture(scope="module")
def many_recordings(recordings, tmp_path_factory) -> Path:
    """LOCAL_FILES one-second recordings: long enough a run to stop in its middle."""
    folder = tmp_path_factory.mktemp("many")
    clip = (recordings / "yes_16k.wav").read_bytes()
    for index in range(LOCAL_FILES):
        (folder / f"{index:04d}.wav").write_bytes(clip)
    return folder


def labelling_started(output_dir: Path) -> Callable[[], bool]:
    """Whether a run into output_dir has recorded progress and is not done."""

    def ready() -> bool:
        for path in glob.glob(f"{output_dir}.staging-*/{output.PROGRESS_DIR}/group-*.json"):
            try:
                files = json.loads(Path(path).read_text())["files"]
            except (OSError, ValueError):
                continue
            if 0 < files < LOCAL_FILES:
                return True
        return False

    return ready


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_local_run_stopped_while_labelling(many_recordings, recordings, tmp_path, signum, code):
    out = tmp_path / "out"
    earlier = [sys.executable, "-m", "pipeline.cli", "--input", str(recordings / "nested")]
    subprocess.run([*earlier, "--output", str(out), "--quiet"], cwd=ROOT, check=True)
    previous = read_output(out), (out / output.SUMMARY_FILE).read_text()

    argv = ["--input", str(many_recordings), "--output", str(out)]
    process = run_until(argv, labelling_started(out))
    exit_code, seconds, stderr = stop(process, signum)
    assert exit_code == code, stderr
    assert seconds < STOP_LIMIT_S
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert (read_output(out), (out / output.SUMMARY_FILE).read_text()) == previous
    assert not glob.glob(f"{out}.staging-*")


def test_a_second_ctrl_c_ends_the_run_at_once(many_recordings, tmp_path):
    out = tmp_path / "out"
    process = run_until(
        ["--input", str(many_recordings), "--output", str(out)], labelling_started(out)
    )
    exit_code, seconds, _ = stop(process, signal.SIGINT, again_after_s=0.01)
    assert exit_code == 130 and seconds < STOP_LIMIT_S
    assert not out.exists()
    one_file = ["--input", str(many_recordings / "0000.wav"), "--output", str(out), "--quiet"]
    # whatever the first Ctrl-C left, the next run clears
    subprocess.run([sys.executable, "-m", "pipeline.cli", *one_file], cwd=ROOT, check=True)
    assert not glob.glob(f"{out}.staging-*") and len(read_output(out)) == 1


@pytest.fixture(scope="module")
def held_s3(recordings, tmp_path_factory) -> Iterator[tuple[list[str], dict, object, str]]:
    """(S3 options through the holding proxy, the environment, a client of moto's own, the
    proxy's endpoint), with recordings under stop-listing/, stop-labelling/ and stop-commit/."""
    environment = {
        **os.environ,
        **offline_cloud_environment(tmp_path_factory.mktemp("stop_cloud")),
    }
    port, proxy_port = free_port(), free_port()
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proxy = [sys.executable, "-m", "tests.fault_proxy", "--port", str(proxy_port)]
    proxy += ["--upstream", f"http://127.0.0.1:{port}", "--failure-rate", "0"]
    for request in HOLDS:
        proxy += ["--hold", request]
    with local_server(moto, port), local_server(proxy, proxy_port, cwd=ROOT):
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="audio-in")
        client.create_bucket(Bucket="labels-out")
        clip = (recordings / "yes_16k.wav").read_bytes()
        for prefix in ("stop-listing", "stop-labelling", "stop-commit"):
            for index in range(20):
                client.put_object(Bucket="audio-in", Key=f"{prefix}/{index:04d}.wav", Body=clip)
        endpoint = f"http://127.0.0.1:{proxy_port}"
        options = ["--s3_endpoint_url", endpoint, "--s3_region_name", "us-east-1"]
        yield options, environment, client, endpoint


def held(endpoint: str, request: str) -> Callable[[], bool]:
    """Whether the proxy is holding `request` (one of HOLDS) now."""

    def ready() -> bool:
        with urllib.request.urlopen(f"{endpoint}/_fault_proxy/stats") as answer:
            return json.load(answer)["holding"].get(request, 0) > 0

    return ready


def bucket_state(client, prefix: str) -> tuple[dict, list[str]]:
    """(the output's summary, every key under prefix but the staging's)."""
    listed = client.list_objects_v2(Bucket="labels-out", Prefix=prefix).get("Contents", [])
    keys = sorted(item["Key"] for item in listed)
    body = client.get_object(Bucket="labels-out", Key=f"{prefix}/_summary.json")["Body"].read()
    return json.loads(body), [key for key in keys if ".staging-" not in key]


def staging_keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket="labels-out", Prefix=prefix).get("Contents", [])
    return [item["Key"] for item in listed if ".staging-" in item["Key"]]


@pytest.mark.parametrize(
    ("moment", "signum", "code"),
    [("listing", signal.SIGTERM, 143), ("labelling", signal.SIGINT, 130)],
)
def test_a_bucket_run_stopped_while_listing_or_labelling(held_s3, moment, signum, code):
    options, environment, client, endpoint = held_s3
    prefix = f"stopped-{moment}"
    uri = f"s3://labels-out/{prefix}"
    earlier = ["--input", "s3://audio-in/stop-commit/0000.wav", "--output", uri, "--quiet"]
    moto = ["--s3_endpoint_url", client.meta.endpoint_url, "--s3_region_name", "us-east-1"]
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *earlier, *moto],
        cwd=ROOT,
        env=environment,
        check=True,
    )
    previous = bucket_state(client, prefix)

    argv = ["--input", f"s3://audio-in/stop-{moment}/", "--output", uri, *options]
    moment_request = next(request for request in HOLDS if f"stop-{moment}" in request)
    process = run_until(argv, held(endpoint, moment_request), environment)
    exit_code, seconds, stderr = stop(process, signum)
    assert exit_code == code, stderr
    assert seconds < STOP_LIMIT_S
    assert bucket_state(client, prefix) == previous
    assert not staging_keys(client, prefix)


def test_a_bucket_run_stopped_while_committing_is_finished_by_the_next(held_s3):
    """Once the commit's journal is written the new output is decided: a stop then leaves the
    commit to the next run (output.repair), which finishes it before anything else."""
    options, environment, client, endpoint = held_s3
    uri = "s3://labels-out/stop-commit"
    moto = ["--s3_endpoint_url", client.meta.endpoint_url, "--s3_region_name", "us-east-1"]
    earlier = ["--input", "s3://audio-in/stop-listing/0000.wav", "--output", uri, "--quiet"]
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *earlier, *moto],
        cwd=ROOT,
        env=environment,
        check=True,
    )

    argv = ["--input", "s3://audio-in/stop-commit/", "--output", uri, *options]
    process = run_until(argv, held(endpoint, HOLDS[2]), environment)
    exit_code, seconds, stderr = stop(process, signal.SIGINT)
    assert exit_code == 130, stderr
    assert seconds < STOP_LIMIT_S
    assert staging_keys(client, "stop-commit")  # the journal, for the next run

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    previous = FileSystems._pipeline_options
    try:
        FileSystems.set_options(PipelineOptions(moto))
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            output.repair(uri)
    finally:
        FileSystems.set_options(previous)
    summary, keys = bucket_state(client, "stop-commit")
    assert summary["files"] == 20 and not staging_keys(client, "stop-commit")
    assert len([key for key in keys if key.endswith(".parquet")]) == len(summary["parquet_files"])
