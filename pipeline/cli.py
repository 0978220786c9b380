"""`yesno-label`: label every WAV file under --input, writing Parquet rows under --output."""

import argparse
import contextlib
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from model.audio import DEFAULT_MAX_DURATION_S
from model.serving import RUNTIMES

# Windows per model call. Small calls keep onnxruntime's intermediate tensors in the processor's
# caches, which is faster and needs less memory than calls of hundreds of windows.
DEFAULT_BATCH_SIZE = 32
# Exit codes (README, "Exit codes"): 0 committed; 1 the job failed (a traceback says why; the
# output is left as it was); 2 bad arguments or input (argparse's own code too);
# 3 more files failed than --max_error_rate allows, nothing committed; 4 the commit began but
# could not finish (the next run finishes it); 128 + the signal's number (130 Ctrl-C, 143
# SIGTERM) stopped by a signal, nothing committed.
EXIT_BAD_INPUT = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_COMMIT_INCOMPLETE = 4
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a stop signal, the run has this long to clear its staging before the process ends.
STOP_GRACE_S = 8.0


# Warnings Beam logs that no user of this tool can act on. Without the optional GCP extra, Beam
# logs the first at every start, when its BigQuery client module is imported.
UNACTIONABLE_WARNINGS = ("apitools not found, and bigquery client libraries are not available",)


def drop_unactionable_warnings(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(UNACTIONABLE_WARNINGS)


def drop_beam_errors(record: logging.LogRecord) -> bool:
    """Once a run is stopped, Beam logs the stop as an error, with a traceback, at every step it
    unwinds (its workers' too): not news to the user who stopped it."""
    return not record.name.startswith("apache_beam")


class RunStopped(BaseException):
    """A stop signal arrived: the run ends where it is and commits nothing. A BaseException,
    so that no `except Exception` on the way (a file's error row) takes it for a failure;
    Beam may still wrap it in an error of its own (label_until_stopped unwraps it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Stopping:
    signum: int | None = None  # the stop signal received, if any


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stopping]:
    """SIGINT and SIGTERM raise RunStopped in the main thread, once: from then on the process
    has STOP_GRACE_S to clean up and end (threads still waiting on a bucket would hold its exit
    longer: then it ends there), and a second signal ends it at once."""
    stopping = Stopping()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def end_now(signum: int, _frame) -> None:
        os._exit(128 + signum)

    def stop(signum: int, _frame) -> None:
        stopping.signum = signum
        for handler in logging.getLogger().handlers:
            handler.addFilter(drop_beam_errors)
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, end_now)
        deadline = threading.Timer(STOP_GRACE_S, os._exit, [128 + signum])
        deadline.daemon = True
        deadline.start()
        raise RunStopped(signum)

    previous = {stop_signal: signal.signal(stop_signal, stop) for stop_signal in STOP_SIGNALS}
    try:
        yield stopping
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)


def label_until_stopped(settings: Any, options: Any) -> dict:
    """pipeline.run.label_files, ended by RunStopped if a stop signal arrives, whatever Beam
    made of the exception on its way out."""
    from pipeline.run import label_files

    with stop_on_signals() as stopping:
        try:
            return label_files(settings, options)
        except BaseException as error:
            if stopping.signum is None or isinstance(error, RunStopped):
                raise
            raise RunStopped(stopping.signum) from error


def build_parser() -> argparse.ArgumentParser:
    from pipeline.retries import add_retry_arguments
    from pipeline.run import DEFAULT_MAX_ERROR_RATE
    from pipeline.sources import DEFAULT_EXTENSIONS  # imports Beam: after logging is set up

    parser = argparse.ArgumentParser(
        prog="yesno-label",
        description="Label WAV recordings as yes / no / unknown / silence, one Parquet row "
        "per file. Any other flag is passed to Beam as a pipeline option (e.g. --runner, "
        "--direct_num_workers=2 --direct_running_mode=multi_processing).",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a directory (searched recursively for files with --extensions, following links"
        " to folders), a glob, a bucket prefix, or a manifest of paths: a .txt file (one path"
        " per line), or a .csv or .parquet file with a `path` column, local or in a bucket"
        " (relative paths are relative to the manifest's folder)",
    )
    parser.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help="comma-separated file extensions to label in a folder, glob or bucket prefix, any"
        " letter case (default %(default)s; e.g. wav,flac,ogg,mp3); a manifest's files are"
        " labelled whatever their names",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="directory for the Parquet dataset; a rerun replaces it",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="1 s windows per model call (default %(default)s)",
    )
    parser.add_argument(
        "--max_duration_s",
        type=float,
        default=DEFAULT_MAX_DURATION_S,
        help="longer recordings get an error row instead of a label (default %(default)s)",
    )
    parser.add_argument(
        "--skip_existing",
        action="store_true",
        help="keep the rows already in --output that this model scored without an error, and"
        " label only the other files",
    )
    parser.add_argument(
        "--keep_error_rows",
        action="store_true",
        help="with --skip_existing: keep the earlier error rows too, instead of retrying them",
    )
    parser.add_argument(
        "--max_error_rate",
        type=float,
        default=DEFAULT_MAX_ERROR_RATE,
        help="if more than this share of the files fail, commit nothing, keep the previous"
        f" output and exit with code {EXIT_TOO_MANY_ERRORS} (default %(default)s)",
    )
    parser.add_argument(
        "--events",
        help="also write one row per keyword occurrence (path, label, start_s, end_s, score,"
        " model_version) as a Parquet dataset in this directory, committed with --output",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress while it runs (by default: a line redrawn every 2 s on a terminal, a"
        " log line every 30 s otherwise)",
    )
    parser.add_argument(
        "--model",
        help="exported model directory (default: the model shipped inside the installed "
        "package, found by each worker in its own installation)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what scores the windows: onnx (onnxruntime, the default when the model has "
        "model.onnx) or tensorflow (the SavedModel, which model.onnx is checked against)",
    )
    parser.add_argument(
        "--files_per_group",
        type=int,
        help="files labelled and written to one Parquet file together, at most (default "
        "4096); a group is one worker's unit of work, so lower it for long recordings, "
        "for more workers to share them",
    )
    add_retry_arguments(parser)
    return parser


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser of every Beam pipeline option imported so far, built as
    `PipelineOptions.get_all_options` builds it (which only logs the arguments it does not
    know, and drops them)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for options_class in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)
    return parser


def unknown_options(beam_args: Sequence[str]) -> list[str]:
    """The arguments that no Beam pipeline option takes: the options, or, when every option is
    known, a stray positional argument. DaskRunner's options are defined in its module, whose
    import costs a quarter of a second: it is imported only when an argument is unknown
    without it."""
    if not beam_args:
        return []
    unknown = beam_option_parser().parse_known_args(list(beam_args))[1]
    if unknown:
        with contextlib.suppress(ImportError):  # where dask is installed
            import apache_beam.runners.dask.dask_runner  # noqa: F401
        unknown = beam_option_parser().parse_known_args(list(beam_args))[1]
    return [arg for arg in unknown if arg.startswith("-")] or unknown


def unknown_option_message(argument: str) -> str:
    name = argument.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {argument!r}"
    known = [
        option
        for parser in (build_parser(), beam_option_parser())
        for action in parser._actions
        for option in action.option_strings
    ]
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else "")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """yesno-label's own arguments, and the Beam pipeline options; an argument that neither
    takes stops the run here (exit code 2), before anything is written."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    unknown = unknown_options(beam_args)
    if unknown:
        parser.error(unknown_option_message(unknown[0]))
    from pipeline.sources import parse_extensions

    try:
        args.extensions = parse_extensions(args.extensions)
    except ValueError as error:
        parser.error(str(error))
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if args.files_per_group is not None and args.files_per_group < 1:
        parser.error("--files_per_group must be at least 1")
    if args.max_duration_s <= 0:
        parser.error("--max_duration_s must be positive")
    if not 0 <= args.max_error_rate <= 1:
        parser.error("--max_error_rate must be a fraction from 0 to 1")
    if args.io_retries < 0:
        parser.error("--io_retries must be 0 or more")
    if args.io_retry_deadline_s <= 0:
        parser.error("--io_retry_deadline_s must be positive")
    return args, beam_args


def format_summary(summary: dict) -> str:
    labels = ", ".join(f"{label} {count}" for label, count in summary["labels"].items())
    errors = ", ".join(f"{kind} {count}" for kind, count in summary["errors_by_kind"].items())
    kept = summary["files_kept_from_earlier_output"]
    return (
        f"yesno-label: {summary['files']} files -> {summary['output']}"
        + (f" ({kept} kept from the earlier output)" if kept else "")
        + f"\n  labels: {labels or 'none'}"
        + f"\n  errors: {summary['errors']}"
        + (f" ({errors})" if errors else "")
        + (
            f"\n  keyword events: {summary['keyword_events']} -> {summary['events']['output']}"
            if "events" in summary
            else ""
        )
        + format_retries(summary)
        + f"\n  wall time: {summary['wall_time_s']:.1f} s, "
        + f"{summary['files_per_s']:.1f} files/s"
    )


def format_retries(summary: dict) -> str:
    """The summary's line on bucket requests tried again, if any were."""
    retried = summary.get("io_retries", {})
    if not retried:
        return ""
    busiest = sorted(retried.items(), key=lambda item: -item[1])[:4]
    return (
        f"\n  bucket requests retried: {sum(retried.values())} ("
        + ", ".join(f"{operation} {count}" for operation, count in busiest)
        + ")"
    )


def rebuild_report(argv: Sequence[str]) -> int:
    """`yesno-label report <output>`: write `<output>/_report.html` again."""
    parser = argparse.ArgumentParser(
        prog="yesno-label report", description="Rebuild the HTML report of an existing output."
    )
    parser.add_argument("output", help="an output directory (or bucket prefix) of yesno-label")
    args = parser.parse_args(argv)
    from pipeline.report import rebuild_report as rebuild

    try:
        print(f"yesno-label: wrote {rebuild(args.output)}")
    except FileNotFoundError as error:
        print(f"yesno-label: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return rebuild_report(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop_unactionable_warnings)
    # The local multi-process runner relays its workers' start-up warnings, which no user can
    # act on ("No semi_persistent_directory found", "Discarding unparseable args"); errors pass.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    args, beam_args = parse_args(argv)

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.retries import RetryPolicy
    from pipeline.run import (
        CommitIncompleteError,
        NoInputError,
        RunSettings,
        TooManyErrorsError,
    )
    from pipeline.sources import GROUP_SIZE, ListingError, ManifestError

    settings = RunSettings(
        input_path=args.input,
        output_dir=args.output,
        model_dir=args.model,
        batch_size=args.batch_size,
        max_duration_s=args.max_duration_s,
        skip_existing=args.skip_existing,
        runtime=args.runtime,
        max_error_rate=args.max_error_rate,
        keep_error_rows=args.keep_error_rows,
        events_dir=args.events,
        progress=not args.quiet,
        files_per_group=args.files_per_group or GROUP_SIZE,
        extensions=args.extensions,
        retry_policy=RetryPolicy(args.io_retries, args.io_retry_deadline_s),
    )
    try:
        summary = label_until_stopped(settings, PipelineOptions(beam_args))
    except RunStopped as stopped:
        print(
            f"yesno-label: stopped by {stopped}: nothing was committed and the staging was"
            " cleared (a commit already under way is finished by the next run)",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    except (NoInputError, FileExistsError, ListingError, ManifestError) as error:
        print(f"yesno-label: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TooManyErrorsError as error:
        print(f"yesno-label: {error}", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    except CommitIncompleteError as error:
        print(f"yesno-label: {error}", file=sys.stderr)
        return EXIT_COMMIT_INCOMPLETE
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
