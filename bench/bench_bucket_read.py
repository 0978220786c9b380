"""Bucket read benchmark: Beam's stock `FileSystems.open` against `pipeline.storage.open_input`.

Starts local API servers (moto's S3 server, gcp-storage-emulator) on 127.0.0.1, uploads N
one-second 16 kHz WAV files to each, then in one process reads every object whole, first with
Beam's filesystem (which builds a new client for each file), then with `open_input` (one client
per process). Prints files/s and this process's CPU per file for each, and the ratios. One
untimed read of each kind comes first, so imports and our one client per process are not
counted. Nothing reaches a real cloud: fake credentials, no metadata server. From the repository:

    python -m bench.bench_bucket_read --files 300
"""

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from tests.servers import free_port, local_server, offline_cloud_environment

BUCKET = "bench-audio"


def one_second_wavs(count: int) -> list[bytes]:
    """Distinct one-second 16 kHz 16-bit mono WAV files (noise, so no two are the same)."""
    generator = np.random.default_rng(20_260_601)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        samples = generator.uniform(-0.5, 0.5, 16_000).astype(np.float32)
        soundfile.write(buffer, samples, 16_000, subtype="PCM_16", format="WAV")
        files.append(buffer.getvalue())
    return files


def reading_cost(
    read: Callable[[str], bytes], paths: list[str], expected: list[bytes]
) -> tuple[float, float]:
    """Files per second, and this process's CPU milliseconds per file (the server runs in its
    own process, so that is what a worker spends), reading every path once after one untimed
    read; checks that what was read is what was uploaded."""
    read(paths[0])
    started, started_cpu = time.perf_counter(), time.process_time()
    contents = [read(path) for path in paths]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    if contents != expected:
        raise AssertionError("a read returned other bytes than were uploaded")
    return len(paths) / elapsed, 1000 * cpu / len(paths)


def compare(scheme: str, paths: list[str], expected: list[bytes]) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from pipeline.storage import open_input

    def stock(path: str) -> bytes:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
            return file.read()

    def ours(path: str) -> bytes:
        with open_input(path) as file:
            return file.read()

    stock_rate, stock_cpu = reading_cost(stock, paths, expected)
    our_rate, our_cpu = reading_cost(ours, paths, expected)
    print(f"{scheme}:// {len(paths)} files of {len(expected[0]):,} bytes")
    for name, rate, cpu in (
        ("stock Beam FileSystems.open + read", stock_rate, stock_cpu),
        ("pipeline.storage.open_input + read", our_rate, our_cpu),
    ):
        print(f"  {name}: {rate:7.1f} files/s, {cpu:6.1f} ms CPU per file")
    speedup, cpu_saving = our_rate / stock_rate, stock_cpu / our_cpu
    print(f"  ratio ours/stock: {speedup:.1f}x files/s; stock uses {cpu_saving:.1f}x the CPU")


def bench_s3(files: list[bytes]) -> None:
    import boto3
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with local_server(command, port):
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        for index, contents in enumerate(files):
            client.put_object(Bucket=BUCKET, Key=f"wav/{index:06d}.wav", Body=contents)
        FileSystems.set_options(PipelineOptions(["--s3_endpoint_url", endpoint]))
        paths = [f"s3://{BUCKET}/wav/{index:06d}.wav" for index in range(len(files))]
        compare("s3", paths, files)


def bench_gcs(files: list[bytes]) -> None:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.cloud import storage

    port = free_port()
    command = [sys.executable, "-m", "gcp_storage_emulator", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    endpoint = f"http://127.0.0.1:{port}"
    with local_server(command, port):
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        bucket = storage.Client().create_bucket(BUCKET)
        for index, contents in enumerate(files):
            bucket.blob(f"wav/{index:06d}.wav").upload_from_string(contents)
        FileSystems.set_options(PipelineOptions([]))
        paths = [f"gs://{BUCKET}/wav/{index:06d}.wav" for index in range(len(files))]
        compare("gs", paths, files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=300, help="objects per store")
    parser.add_argument("--stores", nargs="+", choices=["s3", "gs"], default=["s3", "gs"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        os.environ.update(offline_cloud_environment(Path(temporary)))
        files = one_second_wavs(args.files)
        for store in args.stores:
            {"s3": bench_s3, "gs": bench_gcs}[store](files)


if __name__ == "__main__":
    main()
