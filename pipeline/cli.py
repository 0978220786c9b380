"""`yesno-label`: label every WAV file under --input, writing Parquet rows under --output."""

import argparse
import collections
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence

from model.contract import DEFAULT_ARTIFACT, METADATA_FILE

DEFAULT_BATCH_SIZE = 256
LOCAL_RUNNER_NAMES = {None, "directrunner", "direct"}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="yesno-label",
        description="Label WAV recordings as yes / no / unknown / silence, one Parquet row "
        "per file. Any other flag is passed to Beam as a pipeline option (e.g. --runner, "
        "--direct_num_workers=2 --direct_running_mode=multi_processing).",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a directory (searched recursively for "
        ".wav in any letter case), a glob, or a bucket prefix",
    )
    parser.add_argument("--output", required=True, help="directory for the Parquet dataset")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="1 s windows per model call (default %(default)s)",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_ARTIFACT),
        help="exported model directory (default: the model shipped with the package)",
    )
    args, beam_args = parser.parse_known_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    return args, beam_args


def make_runner(options):
    """The runner to use: Beam's in-process portable runner when none (or Direct) is named.

    Beam 2.77's DirectRunner first tries to download the Prism runner binary; the FnApiRunner it
    falls back to is what runs here, directly, honouring --direct_num_workers and
    --direct_running_mode.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if (name.lower() if isinstance(name, str) else name) not in LOCAL_RUNNER_NAMES:
        return None  # Beam resolves the named runner itself
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def read_model_version(model_dir: str) -> str:
    with open(os.path.join(model_dir, METADATA_FILE)) as file:
        return json.load(file)["model_version"]


def summarize(output_dir: str, run_prefix: str) -> collections.Counter:
    """Count labels (and errors, as None) in the Parquet files this run wrote."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(output_dir, f"{run_prefix}*.parquet")
    counts: collections.Counter = collections.Counter()
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as file:
            counts.update(pq.read_table(file, columns=["label"]).column("label").to_pylist())
    return counts


def remove_stale_outputs(output_dir: str, run_prefix: str) -> None:
    """After a successful run, drop Parquet files an earlier run left under the same output."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.transforms import OUTPUT_PREFIX

    pattern = FileSystems.join(output_dir, f"{OUTPUT_PREFIX}-*.parquet")
    stale = [
        match.path
        for match in FileSystems.match([pattern])[0].metadata_list
        if not os.path.basename(match.path).startswith(run_prefix)
    ]
    if stale:
        FileSystems.delete(stale)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args, beam_args = parse_args(argv)

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.transforms import OUTPUT_PREFIX, label_pipeline, list_input

    if next(list_input(args.input), None) is None:
        print(f"yesno-label: no WAV files match --input {args.input}", file=sys.stderr)
        return 2
    options = PipelineOptions(beam_args)
    run_prefix = f"{OUTPUT_PREFIX}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with beam.Pipeline(runner=make_runner(options), options=options) as pipeline:
        label_pipeline(
            pipeline,
            input_path=args.input,
            output_dir=args.output,
            model_dir=args.model,
            model_version=read_model_version(args.model),
            batch_size=args.batch_size,
            output_prefix=run_prefix,
        )
    elapsed = time.monotonic() - started
    remove_stale_outputs(args.output, run_prefix)
    counts = summarize(args.output, run_prefix)
    files = sum(counts.values())
    per_label = ", ".join(f"{label} {counts[label]}" for label in sorted(counts, key=str) if label)
    print(
        f"yesno-label: {files} files -> {args.output}\n"
        f"  labels: {per_label or 'none'}\n"
        f"  errors: {counts[None]}\n"
        f"  wall time: {elapsed:.1f} s, {files / elapsed:.1f} files/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
