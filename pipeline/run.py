"""One labelling run: plan the input, run the Beam job into staging, check it, commit, summarise.

Nothing here grows with the number of files but the lists of slices and of Parquet files (one
per few thousand files): the job reads the input itself, labels, writes and adds up the figures
(`pipeline.transforms`), and the launcher checks and commits what the job's tally says.
"""

import contextlib
import datetime
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from model.decision import Decision
from model.serving import read_metadata, resolve_runtime
from pipeline import output, retries, storage
from pipeline.progress import ProgressReporter, read_progress
from pipeline.report import write_report
from pipeline.sources import (
    DEFAULT_EXTENSIONS,
    GROUP_SIZE,
    SMALL_INPUT,
    InputPlan,
    no_input_message,
    plan_input,
    small_input_groups,
)
from pipeline.tally import Tally
from pipeline.transforms import JobSettings, LabelGroups, SkipExisting

LOCAL_RUNNER_NAMES = {None, "directrunner", "direct"}
DEFAULT_MAX_ERROR_RATE = 0.5  # share of failed files above which nothing is committed


class NoInputError(ValueError):
    """The input matched no file at all."""


class TooManyErrorsError(RuntimeError):
    """More of the run's files failed than --max_error_rate allows; nothing was committed."""


class CommitIncompleteError(RuntimeError):
    """The commit began but could not finish, after its retries; the next run finishes it."""


@dataclass(frozen=True)
class RunSettings:
    input_path: str
    output_dir: str
    model_dir: str | None  # None: the model shipped inside the installed package
    batch_size: int
    max_duration_s: float
    skip_existing: bool = False
    runtime: str = "auto"  # model.serving.RUNTIMES
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    keep_error_rows: bool = False  # with skip_existing: keep earlier error rows, do not retry
    events_dir: str | None = None  # where to write one row per keyword occurrence
    progress: bool = True  # report progress on stderr while the job runs (pipeline.progress)
    files_per_group: int = GROUP_SIZE  # files labelled and written together, at most
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # of the files a folder or prefix gives
    retry_policy: retries.RetryPolicy = field(default_factory=retries.RetryPolicy)  # buckets


def read_model_version(model_dir: str | None) -> str:
    """The model's content hash, from its metadata."""
    return read_metadata(model_dir)["model_version"]


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


def join_buckets(files: int, group_size: int) -> int:
    """Buckets (groups) of a --skip_existing join over about `files` paths and earlier rows:
    groups of MIN_GROUP_SIZE to group_size files, as a listing makes them."""
    size = small_input_groups(files, group_size) if files < SMALL_INPUT else group_size
    return max(1, math.ceil(files / size))


def spread_groups_on_dask(options: PipelineOptions, num_groups: int) -> None:
    """The DaskRunner ignores Reshuffle and puts up to 128 created elements in one partition, so
    without this all groups would run on one Dask worker."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    if not dask_options.npartitions and not dask_options.partition_size:
        dask_options.npartitions = num_groups


def run_pipeline(
    options: PipelineOptions,
    plan: InputPlan,
    job: JobSettings,
    skip_existing: SkipExisting | None,
) -> None:
    if runner_name(options).lower().startswith("dask"):
        spread_groups_on_dask(options, len(plan.sources))
    with beam.Pipeline(runner=make_runner(options), options=options) as pipeline:
        _ = (
            pipeline
            | "Slices" >> beam.Create(list(enumerate(plan.sources)))
            | "LabelGroups" >> LabelGroups(options, job, skip_existing)
        )


def read_tally(staging: str) -> Tally:
    path = FileSystems.join(staging, output.TALLY_FILE)
    if not FileSystems.exists(path):
        raise RuntimeError("the job ended without its tally; the output is left as it was")
    with FileSystems.open(path) as file:
        return Tally.from_json(file.read().decode())


def check_job_complete(tally: Tally, plan: InputPlan, staged_files: int) -> None:
    """Every slice of the input was read to its end, every path it listed reached a written
    group, and every group the tally counts is a file in staging (each group checked its own
    rows against its paths): no runner lost or repeated a part of the run."""
    problems = []
    if tally.slices_done != len(plan.sources):
        problems.append(f"{tally.slices_done} of {len(plan.sources)} input slices read")
    if tally.received != tally.listed:
        problems.append(f"{tally.received} of {tally.listed} listed paths labelled or kept")
    if staged_files != tally.groups:
        problems.append(f"{staged_files} Parquet files for {tally.groups} groups")
    if problems:
        raise RuntimeError(
            f"the runner lost part of the run ({'; '.join(problems)}); the output is left as it was"
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


def plan_skip_existing(
    settings: RunSettings, plan: InputPlan, model_version: str, events: output.EventsDataset | None
) -> SkipExisting | None:
    """The earlier output's files to join with; None when nothing of it can be kept (no output
    yet, or not committed with these events), and the run is a plain one."""
    earlier = output.read_summary(settings.output_dir)
    label_files = output.summary_files(settings.output_dir, earlier)
    event_files = []
    if events is not None:
        if events.committed_with(earlier):
            event_files = output.summary_files(
                events.output_dir, output.read_summary(events.output_dir)
            )
        else:
            label_files = []
    if not label_files:
        return None
    return SkipExisting(
        label_files,
        event_files,
        join_buckets(plan.files + earlier.get("files", 0), settings.files_per_group),
        model_version,
        settings.keep_error_rows,
    )


@dataclass(frozen=True)
class PreparedRun:
    """A run about to start: its id, staging, the events dataset it writes (with --events),
    the model's metadata, and when it started."""

    run_id: str
    staging: str
    events: output.EventsDataset | None
    metadata: dict
    started_at: datetime.datetime
    started: float  # time.monotonic()

    @property
    def model_version(self) -> str:
        return self.metadata["model_version"]

    def discard(self) -> None:
        output.discard(self.staging)
        if self.events is not None:
            output.discard(self.events.staging)


@dataclass(frozen=True)
class JobResult:
    """What a finished, checked job left in staging."""

    tally: Tally
    parquet_files: list[str]


def label_files(settings: RunSettings, options: PipelineOptions) -> dict:
    """Label every file the input names into settings.output_dir; returns the run's summary."""
    run = prepare(settings, options)
    try:
        result = execute(settings, options, run)
    except BaseException:
        run.discard()
        raise
    summary = summarise(settings, options, run, result)
    commit(run.staging, settings.output_dir, run.events)
    return summary


def prepare(settings: RunSettings, options: PipelineOptions) -> PreparedRun:
    """Put the retry policy and the filesystems in place, finish or clear what an earlier run
    left, check the outputs, and name the run and its staging."""
    retry_options = options.view_as(retries.IoRetryOptions)
    retry_options.io_retries = settings.retry_policy.retries
    retry_options.io_retry_deadline_s = settings.retry_policy.deadline_s
    retries.apply(settings.retry_policy)
    storage.share_botocore_models()
    retries.take_counts()  # the run's own counts only
    FileSystems.set_options(options)
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    output.repair(settings.output_dir)
    output.check_output_dir(settings.output_dir)
    if settings.events_dir is not None:
        check_events_dir(settings.events_dir, settings.output_dir)
    run_id = started_at.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    events = None
    if settings.events_dir is not None:
        events_staging = output.staging_dir(settings.events_dir, run_id)
        events = output.EventsDataset(settings.events_dir, events_staging, run_id)
    staging = output.staging_dir(settings.output_dir, run_id)
    metadata = read_metadata(settings.model_dir)
    return PreparedRun(run_id, staging, events, metadata, started_at, started)


def execute(settings: RunSettings, options: PipelineOptions, run: PreparedRun) -> JobResult:
    """Plan the input, run the job into staging and check what it wrote: every file its row,
    and errors within --max_error_rate."""
    plan = plan_input(
        settings.input_path, run.staging, settings.files_per_group, settings.extensions
    )
    if plan.exact and not plan.files:
        raise NoInputError(no_input_message(settings.input_path, settings.extensions))
    skip = (
        plan_skip_existing(settings, plan, run.model_version, run.events)
        if settings.skip_existing
        else None
    )
    job = JobSettings(
        model_dir=settings.model_dir,
        model_version=run.model_version,
        batch_size=settings.batch_size,
        max_duration_s=settings.max_duration_s,
        staging=run.staging,
        run_id=run.run_id,
        runtime=settings.runtime,
        events_staging=run.events.staging if run.events else None,
    )
    reporter = (
        ProgressReporter(plan.files, lambda: read_progress(run.staging), exact=plan.exact)
        if settings.progress
        else contextlib.nullcontext()
    )
    with reporter:
        run_pipeline(options, plan, job, skip)
    tally = read_tally(run.staging)
    parquet_files = output.parquet_names(run.staging)
    check_job_complete(tally, plan, len(parquet_files))
    if not tally.listed:
        raise NoInputError(f"the manifest {settings.input_path} lists no file")
    check_error_rate(tally.errors, tally.rows, settings.max_error_rate)
    return JobResult(tally, parquet_files)


def summarise(
    settings: RunSettings, options: PipelineOptions, run: PreparedRun, result: JobResult
) -> dict:
    """The run's summary, written with the report (and the events' own summary) into staging."""
    elapsed = time.monotonic() - run.started
    tally = result.tally
    tally.add_io_counts(*retries.take_counts())
    summary = {
        "run_id": run.run_id,
        "files": tally.rows,
        "files_labelled_this_run": tally.labelled,
        "files_kept_from_earlier_output": tally.kept,
        "labels": {label: count for label, count in sorted(tally.labels.items())},
        "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(sorted(tally.errors.items())),
        "model_version": run.model_version,
        "runtime": resolve_runtime(settings.model_dir, settings.runtime),
        "decision": Decision.from_metadata(run.metadata).as_metadata(),
        "input": settings.input_path,
        "output": settings.output_dir,
        "runner": runner_name(options),
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "ended_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(elapsed, 3),
        "files_per_s": round(tally.labelled / elapsed, 2),
        "parquet_files": result.parquet_files,
        "io_retries": dict(sorted(tally.io_retries.items())),
        "io_transient_failures": dict(sorted(tally.io_failures.items())),
    }
    if run.events is not None:
        summary["events"] = run.events.as_summary()
        summary["keyword_events"] = tally.events
        write_events_summary(run.events, summary)
    output.write_summary(run.staging, summary)
    write_report(run.staging, summary, tally, run.events is not None)
    return summary


def commit(staging: str, output_dir: str, events: output.EventsDataset | None) -> None:
    """output.commit; a bucket commit that could not finish is left to the next run (its
    `repair`). A local commit is one exchange: done, or failed with the output as it was."""
    try:
        output.commit(staging, output_dir, events)
    except Exception as error:
        if FileSystems.get_scheme(output_dir) is None:
            raise
        raise CommitIncompleteError(
            f"the commit to {output_dir} could not finish ({type(error).__name__}: {error});"
            " the next run into it finishes it, or clears it if it had not begun"
        ) from error


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


def write_events_summary(events: output.EventsDataset, summary: dict) -> None:
    """The events dataset's own `_summary.json`: its run, files and row count."""
    output.write_summary(
        events.staging,
        {
            "run_id": events.run_id,
            "keyword_events": summary["keyword_events"],
            "files_output": summary["output"],
            "model_version": summary["model_version"],
            "parquet_files": output.parquet_names(events.staging, output.EVENTS_PREFIX),
        },
    )
