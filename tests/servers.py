"""Local servers for tests and benchmarks: started on 127.0.0.1, waited for, stopped by PID."""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in its own process group, so that stopping it stops its children too."""
    output = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{process.args} is not listening on 127.0.0.1:{port}")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group by PID, then SIGKILL whatever has not exited in 20 s."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def local_server(
    command: list[str], port: int, log: Path | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    """A server listening on 127.0.0.1:`port` for the length of the `with`, stopped by PID."""
    process = start(command, log, cwd)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        stop([process])


FAKE_GOOGLE_CREDENTIALS = {  # a token that never expires: no token server is ever asked
    "type": "authorized_user",
    "client_id": "fake.apps.googleusercontent.com",
    "client_secret": "fake",
    "refresh_token": "fake",
    "token": "fake-token",
    "expiry": "2999-01-01T00:00:00Z",
}


def offline_cloud_environment(directory: Path) -> dict[str, str]:
    """Environment for talking to local S3 and GCS servers only: fake keys, a fake Google
    credentials file written into `directory`, and no metadata server (else every process
    retries one for about 22 s)."""
    credentials = directory / "application_default_credentials.json"
    credentials.write_text(json.dumps(FAKE_GOOGLE_CREDENTIALS))
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(directory / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:1",
        "GCE_METADATA_IP": "127.0.0.1:1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
