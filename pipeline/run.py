"""One labelling run: list the input, run the Beam job into staging, commit, summarise."""

import contextlib
import datetime
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from model.contract import DEFAULT_ARTIFACT, METADATA_FILE
from model.decision import Decision
from model.serving import resolve_runtime
from pipeline import output
from pipeline.labels import display_path
from pipeline.loading import list_input
from pipeline.progress import ProgressReporter, read_progress
from pipeline.report import write_report
from pipeline.transforms import LabelGroups

LOCAL_RUNNER_NAMES = {None, "directrunner", "direct"}
FILES_PER_GROUP_RANGE = (256, 4_096)  # a group is a few full batches at least
TARGET_GROUPS = 16  # enough groups to keep a few workers busy when there is enough work


class NoInputError(ValueError):
    """The input matched no file at all."""


class TooManyErrorsError(RuntimeError):
    """More of the run's files failed than --max_error_rate allows; nothing was committed."""


@dataclass(frozen=True)
class RunSettings:
    input_path: str
    output_dir: str
    model_dir: str | None  # None: the model shipped inside the installed package
    batch_size: int
    max_duration_s: float
    skip_existing: bool = False
    runtime: str = "auto"  # model.serving.RUNTIMES
    max_error_rate: float = 1.0  # share of failed files above which nothing is committed
    keep_error_rows: bool = False  # with skip_existing: keep earlier error rows, do not retry
    events_dir: str | None = None  # where to write one row per keyword occurrence
    progress: bool = True  # report progress on stderr while the job runs (pipeline.progress)


def read_model_metadata(model_dir: str | None) -> dict:
    """The model's metadata.json, read without loading TensorFlow."""
    metadata = FileSystems.join(str(model_dir or DEFAULT_ARTIFACT), METADATA_FILE)
    with FileSystems.open(metadata) as file:
        return json.load(file)


def read_model_version(model_dir: str | None) -> str:
    """The model's content hash, from its metadata."""
    return read_model_metadata(model_dir)["model_version"]


def make_runner(options: PipelineOptions):
    """The runner for --runner, where Beam's own lookup would not do.

    No --runner, or DirectRunner: Beam 2.77's DirectRunner first tries to download the Prism
    runner binary; the FnApiRunner it falls back to is run here directly, honouring
    --direct_num_workers and --direct_running_mode. DaskRunner: Beam knows it only by its full
    module path. Any other name is left to Beam.
    """
    name = options.view_as(StandardOptions).runner
    name = name.lower() if isinstance(name, str) else name
    if name == "daskrunner":
        from apache_beam.runners.dask.dask_runner import DaskRunner

        return DaskRunner()
    if name not in LOCAL_RUNNER_NAMES:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def runner_name(options: PipelineOptions) -> str:
    return options.view_as(StandardOptions).runner or "DirectRunner (in-process FnApiRunner)"


def split_into_groups(paths: list[str]) -> list[list[str]]:
    """Consecutive runs of the sorted paths: few groups for small inputs, more for large ones."""
    low, high = FILES_PER_GROUP_RANGE
    size = min(max(len(paths) // TARGET_GROUPS, low), high)
    ordered = sorted(paths)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def spread_groups_on_dask(options: PipelineOptions, num_groups: int) -> None:
    """The DaskRunner ignores Reshuffle and puts up to 128 created elements in one partition, so
    without this all groups would run on one Dask worker."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    if not dask_options.npartitions and not dask_options.partition_size:
        dask_options.npartitions = num_groups


def run_pipeline(
    settings: RunSettings,
    options: PipelineOptions,
    paths: list[str],
    staging: str,
    run_id: str,
    model_version: str,
    events: output.EventsDataset | None,
) -> None:
    groups = split_into_groups(paths)
    path_lists = output.write_path_lists(staging, groups)
    if runner_name(options).lower().startswith("dask"):
        spread_groups_on_dask(options, len(groups))
    with beam.Pipeline(runner=make_runner(options), options=options) as pipeline:
        _ = (
            pipeline
            | "PathLists" >> beam.Create(list(enumerate(path_lists)))
            | "LabelGroups"
            >> LabelGroups(
                options,
                settings.model_dir,
                model_version,
                settings.batch_size,
                settings.max_duration_s,
                staging,
                run_id,
                settings.runtime,
                events.staging if events else None,
            )
        )


def check_one_row_per_path(staging: str, run_id: str, paths: list[str]) -> None:
    """Every listed path has exactly one row of this run, and no row names another path."""
    written = Counter(
        row["path"] for row in output.read_columns(staging, ["path"], output.run_prefix(run_id))
    )
    expected = Counter(display_path(path) for path in paths)
    if written != expected:
        missing = sorted((expected - written).elements())
        extra = sorted((written - expected).elements())
        raise RuntimeError(
            f"the runner wrote {sum(written.values())} rows for {len(paths)} files"
            f" ({len(missing)} paths missing or short of rows, e.g. {missing[:3]};"
            f" {len(extra)} rows extra, e.g. {extra[:3]}); the output is left as it was"
        )


def check_error_rate(errors: Counter, files: int, max_error_rate: float) -> None:
    """Refuse to commit an output in which more than max_error_rate of the files failed (rows
    kept by --skip_existing count too, so retrying known-bad files alone does not trip it)."""
    if files and sum(errors.values()) / files > max_error_rate:
        kinds = ", ".join(f"{kind} {count}" for kind, count in errors.most_common(5))
        raise TooManyErrorsError(
            f"{sum(errors.values())} of {files} files failed ({kinds}), more than"
            f" --max_error_rate {max_error_rate}: nothing was written, the output is left as it was"
        )


def label_files(settings: RunSettings, options: PipelineOptions) -> dict:
    """Label every file the input names into settings.output_dir; returns the run's summary."""
    FileSystems.set_options(options)
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    output.repair(settings.output_dir)
    output.check_output_dir(settings.output_dir)
    if settings.events_dir is not None:
        check_events_dir(settings.events_dir, settings.output_dir)
    paths = list(list_input(settings.input_path))
    if not paths:
        raise NoInputError(f"no WAV files match --input {settings.input_path}")
    run_id = started_at.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    staging = output.staging_dir(settings.output_dir, run_id)
    events = None
    if settings.events_dir is not None:
        events_staging = output.staging_dir(settings.events_dir, run_id)
        events = output.EventsDataset(settings.events_dir, events_staging, run_id)
    metadata = read_model_metadata(settings.model_dir)
    model_version = metadata["model_version"]
    try:
        done = (
            output.carry_over(
                settings.output_dir, staging, model_version, settings.keep_error_rows, events
            )
            if settings.skip_existing
            else set()
        )
        to_label = [path for path in paths if display_path(path) not in done]
        if to_label:
            reporter = (
                ProgressReporter(len(to_label), lambda: read_progress(staging))
                if settings.progress
                else contextlib.nullcontext()
            )
            with reporter:
                run_pipeline(settings, options, to_label, staging, run_id, model_version, events)
        check_one_row_per_path(staging, run_id, to_label)
        labels, errors = output.count_rows(staging)
        check_error_rate(errors, len(done) + len(to_label), settings.max_error_rate)
    except BaseException:
        output.discard(staging)
        if events is not None:
            output.discard(events.staging)
        raise
    elapsed = time.monotonic() - started
    summary = {
        "run_id": run_id,
        "files": sum(labels.values()),
        "files_labelled_this_run": len(to_label),
        "files_kept_from_earlier_output": sum(labels.values()) - len(to_label),
        "labels": {label: count for label, count in sorted(labels.items(), key=str) if label},
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items())),
        "model_version": model_version,
        "runtime": resolve_runtime(settings.model_dir, settings.runtime),
        "decision": Decision.from_metadata(metadata).as_metadata(),
        "input": settings.input_path,
        "output": settings.output_dir,
        "runner": runner_name(options),
        "started_at": started_at.isoformat(timespec="seconds"),
        "ended_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(elapsed, 3),
        "files_per_s": round(len(to_label) / elapsed, 2),
        "parquet_files": [os.path.basename(path) for path in output.parquet_files(staging)],
    }
    if events is not None:
        summary["events"] = events.as_summary()
        summary["keyword_events"] = write_events_summary(events, summary)
    output.write_summary(staging, summary)
    write_report(staging, summary, events.staging if events else None)
    output.commit(staging, settings.output_dir, events)
    return summary


def check_events_dir(events_dir: str, output_dir: str) -> None:
    """--events must be a dataset of its own: not the output, nor inside it."""
    events, out = (path.rstrip("/") for path in (events_dir, output_dir))
    if FileSystems.get_scheme(events) is None:
        events, out = os.path.abspath(events), os.path.abspath(out)
    if events == out or events.startswith(out + "/") or out.startswith(events + "/"):
        raise FileExistsError(
            f"--events {events_dir} must be a directory apart from --output {output_dir}"
        )
    output.repair(events_dir)
    output.check_output_dir(events_dir, output.EVENTS_PREFIX)


def write_events_summary(events: output.EventsDataset, summary: dict) -> int:
    """The events dataset's own `_summary.json` (its run, files and row count); returns the
    number of keyword events."""
    files = output.parquet_files(events.staging, output.EVENTS_PREFIX)
    count = sum(1 for _ in output.read_columns(events.staging, ["label"], output.EVENTS_PREFIX))
    output.write_summary(
        events.staging,
        {
            "run_id": events.run_id,
            "keyword_events": count,
            "files_output": summary["output"],
            "model_version": summary["model_version"],
            "parquet_files": [os.path.basename(path) for path in files],
        },
    )
    return count
