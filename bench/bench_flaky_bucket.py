"""Flaky bucket benchmark: a run from s3:// to s3:// with a fifth of all requests failing,
against the same run with none failing.

Starts moto's S3 server on 127.0.0.1 and two fault proxies in front of it (`tests.fault_proxy`,
the same code on both paths): one fails no request, the other 20% (three in four 503 SlowDown,
one in four dropped connections, seeded). Uploads N one-second WAV files, then runs
`yesno-label` as a whole process through each proxy in turn, alternating, R rounds, each into
its own output. Prints each run's wall time, the retries its summary counts, the median of each
path and their ratio (the target: a 20%-failing bucket costs at most 3x the time of a clean
one). Nothing reaches a real cloud: fake credentials, no metadata server. From the repository:

    python -m bench.bench_flaky_bucket --files 300 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_bucket_read import one_second_wavs
from tests.servers import free_port, local_server, offline_cloud_environment

ROOT = Path(__file__).resolve().parent.parent
FAILURE_RATE = 0.2


def proxy_command(port: int, upstream: str, failure_rate: float) -> list[str]:
    return [
        sys.executable, "-m", "tests.fault_proxy", "--port", str(port), "--upstream", upstream,
        "--failure-rate", str(failure_rate), "--seed", "0",
    ]  # fmt: skip


def timed_run(endpoint: str, output: str, environment: dict) -> float:
    """Seconds for one whole `yesno-label` process."""
    command = [sys.executable, "-m", "pipeline.cli", "--input", "s3://bench-in/clips/"]
    command += ["--output", output, "--quiet", "--s3_endpoint_url", endpoint]
    command += ["--s3_region_name", "us-east-1"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=environment, check=True, stdout=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    environment = {**os.environ, **offline_cloud_environment(Path(tempfile.mkdtemp()))}
    os.environ.update(environment)
    import boto3

    port, clean_port, flaky_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{port}"
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with (
        local_server(moto, port),
        local_server(proxy_command(clean_port, upstream, 0.0), clean_port, cwd=ROOT),
        local_server(proxy_command(flaky_port, upstream, FAILURE_RATE), flaky_port, cwd=ROOT),
    ):
        client = boto3.client("s3", endpoint_url=upstream)
        client.create_bucket(Bucket="bench-in")
        client.create_bucket(Bucket="bench-out")
        for index, contents in enumerate(one_second_wavs(args.files)):
            client.put_object(Bucket="bench-in", Key=f"clips/{index:05d}.wav", Body=contents)
        times: dict[str, list[float]] = {"clean": [], "flaky": []}
        for round_index in range(args.rounds):
            for name, proxy_port in (("clean", clean_port), ("flaky", flaky_port)):
                output = f"s3://bench-out/{name}-{round_index}"
                seconds = timed_run(f"http://127.0.0.1:{proxy_port}", output, environment)
                key = f"{name}-{round_index}/_summary.json"
                summary = json.loads(client.get_object(Bucket="bench-out", Key=key)["Body"].read())
                assert summary["files"] == args.files and summary["errors"] == 0, summary
                retried = sum(summary["io_retries"].values())
                print(f"round {round_index + 1} {name}: {seconds:.1f} s, {retried} retries")
                times[name].append(seconds)
        clean, flaky = (statistics.median(times[name]) for name in ("clean", "flaky"))
        print(
            f"{args.files} files, {args.rounds} rounds; median clean {clean:.1f} s, flaky"
            f" ({FAILURE_RATE:.0%} of requests failing) {flaky:.1f} s: {flaky / clean:.2f}x"
        )


if __name__ == "__main__":
    main()
