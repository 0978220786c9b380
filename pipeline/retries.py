"""One retry policy for every bucket request of a run, and counts of what it retried.

Object stores refuse a share of requests under load (HTTP 503 SlowDown, 429, dropped
connections): at millions of requests that is normal weather, so each request is retried with
exponential backoff and jitter, by the client libraries themselves, configured here rather
than wrapped in loops of our own:

- S3 (boto3, ours and Beam's): botocore's `standard` retry mode with `--io_retries` + 1
  attempts per request, set through botocore's own environment settings (`AWS_RETRY_MODE`,
  `AWS_MAX_ATTEMPTS`) because Beam builds a new boto3 client for each filesystem call.
- GCS (google-cloud-storage, ours and Beam's): google-api-core's `Retry` with the deadline
  `--io_retry_deadline_s`, set as the retry Beam's GCS filesystem takes for every call.

`apply` puts the policy in place in a process (the launcher, and each worker in
`FileSystemsDoFn.setup`). Steps of our own that move several objects (the commit) are redone
whole by `retrying`, until the deadline. Every transient failure and retry is counted per
operation in this process's counts, which each group written takes (`take_counts`) into
Beam's metrics and into the run's tally, for the summary and the report.
"""

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from apache_beam.metrics.metric import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_RETRIES = 10
DEFAULT_DEADLINE_S = 600.0
FIRST_BACKOFF_S = 0.5  # the first wait, doubled at each retry up to MAX_BACKOFF_S, jittered
MAX_BACKOFF_S = 20.0  # botocore's own cap in its standard mode
METRICS_NAMESPACE = "yesno.io"
# Answers that mean "not now" rather than "no": retried.
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}
TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "InternalError",
    "ServiceUnavailable",
}

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a run tries a bucket request before its last error stands."""

    retries: int = DEFAULT_RETRIES  # after the first attempt, per S3 request
    deadline_s: float = DEFAULT_DEADLINE_S  # per GCS request, and per step of the commit

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @classmethod
    def from_options(cls, options: dict | None) -> "RetryPolicy":
        """The policy a run's options dict names (defaults where it names none)."""
        options = options or {}
        return cls(
            int(options.get("io_retries", DEFAULT_RETRIES)),
            float(options.get("io_retry_deadline_s", DEFAULT_DEADLINE_S)),
        )


def add_retry_arguments(parser: Any) -> None:
    """--io_retries and --io_retry_deadline_s, for yesno-label's parser and Beam's."""
    parser.add_argument(
        "--io_retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="times a refused or dropped S3 request is tried again, with exponential backoff"
        " and jitter (default %(default)s)",
    )
    parser.add_argument(
        "--io_retry_deadline_s",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help="seconds a GCS request, or a step of the commit, is tried again before its last"
        " error stands (default %(default)s)",
    )


class IoRetryOptions(PipelineOptions):
    """The retry policy as pipeline options, so that it travels to every worker."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_retry_arguments(parser)


_policy = RetryPolicy()
_lock = threading.Lock()
_retries: Counter = Counter()
_failures: Counter = Counter()
_botocore_counting = False


def apply(policy: RetryPolicy) -> None:
    """Put `policy` in place for every bucket client this process makes from now on."""
    global _policy
    _policy = policy
    os.environ["AWS_RETRY_MODE"] = "standard"
    os.environ["AWS_MAX_ATTEMPTS"] = str(policy.attempts)
    _count_botocore_attempts()
    _set_beam_gcs_retry(policy)


def current() -> RetryPolicy:
    return _policy


def count(operation: str, retried: bool) -> None:
    """One transient failure of `operation`, retried or not (its last attempt), in any thread."""
    with _lock:
        _failures[operation] += 1
        if retried:
            _retries[operation] += 1


def take_counts() -> tuple[Counter, Counter]:
    """(retries, transient failures) per operation counted in this process since the last
    take; taking resets them, so each is added up once."""
    global _retries, _failures
    with _lock:
        taken = _retries, _failures
        _retries, _failures = Counter(), Counter()
    return taken


def add_to_metrics(retried: Counter, failures: Counter) -> None:
    """Counts taken (take_counts) into Beam's metrics, from a DoFn: Beam counts only in the
    thread that runs it, and requests are made in other threads too (fetching ahead)."""
    for operation, count_ in failures.items():
        Metrics.counter(METRICS_NAMESPACE, f"transient_failures {operation}").inc(count_)
    for operation, count_ in retried.items():
        Metrics.counter(METRICS_NAMESPACE, f"retries {operation}").inc(count_)


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may succeed if tried again: a throttling or server answer, a
    connection refused, reset or dropped, a timeout. Access denied, not found, a bad key: no."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    status = getattr(error, "code", None)  # Beam's S3ClientError, google-api-core's errors
    if isinstance(status, int) and status in TRANSIENT_STATUSES:
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in TRANSIENT_CODES or http_status in TRANSIENT_STATUSES
    module = type(error).__module__
    if module.startswith(("botocore", "urllib3", "requests", "google")):
        names = {cls.__name__ for cls in type(error).__mro__}
        transient = {
            "ConnectionError",  # botocore's and requests' (EndpointConnectionError, ...)
            "HTTPClientError",  # botocore: the connection closed, a read timed out
            "ResponseStreamingError",
            "IncompleteReadError",
            "ChunkedEncodingError",
            "ProtocolError",
            "Timeout",
            "RetryError",  # google-api-core: its deadline passed on transient errors
            "TooManyRequests",
            "ServerError",
        }
        return bool(names & transient)
    details = getattr(error, "exception_details", None)  # Beam's BeamIOError
    if isinstance(details, dict) and details:
        return all(isinstance(e, BaseException) and is_transient(e) for e in details.values())
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and is_transient(cause)


def backoff_s(retry: int) -> float:
    """The wait before retry number `retry` (1, 2, ...): full jitter over a doubling cap."""
    return random.uniform(0, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**retry))


def retrying(operation: str, call: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """call(), redone after a transient failure until it succeeds, a failure is permanent, or
    the policy's deadline has passed (then its last error stands)."""
    policy = policy or _policy
    deadline = time.monotonic() + policy.deadline_s
    retry = 0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            retry += 1
            wait = backoff_s(retry)
            retried = time.monotonic() + wait < deadline
            count(operation, retried)
            if not retried:
                raise
            time.sleep(wait)


def _count_botocore_attempts() -> None:
    """Count each S3 attempt that failed transiently, in every botocore session made from now
    on: Beam makes a new session per call, so the counter joins botocore's built-in handlers,
    which each new session registers. Without the AWS extra there is nothing to count."""
    global _botocore_counting
    if _botocore_counting:
        return
    try:
        from botocore import handlers
    except ImportError:
        return

    handlers.BUILTIN_HANDLERS.append(("needs-retry.s3", _count_s3_attempt))
    _botocore_counting = True


def _count_s3_attempt(
    response: Any = None, caught_exception: Any = None, operation: Any = None, attempts=1, **_
) -> None:
    """botocore's needs-retry event, for every attempt: returns None, so botocore's own retry
    handler alone decides."""
    if caught_exception is not None:
        failed = is_transient(caught_exception)
    elif response is not None:
        http, parsed = response
        code = (parsed or {}).get("Error", {}).get("Code")
        failed = http.status_code in TRANSIENT_STATUSES or code in TRANSIENT_CODES
    else:
        failed = False
    if failed:
        name = getattr(operation, "name", "request")
        count(f"s3 {name}", retried=attempts < _policy.attempts)


def gcs_retry(policy: RetryPolicy | None = None) -> Any:
    """google-cloud-storage's retry rule (which errors are transient) with the policy's
    deadline and botocore-like backoff, counting each retry."""
    from google.api_core import retry as api_retry
    from google.cloud.storage.retry import _should_retry

    policy = policy or _policy

    def on_error(error: Exception) -> None:
        count("gcs request", retried=True)
        if _beam_throttling_handler is not None:
            _beam_throttling_handler(error)

    return api_retry.Retry(
        predicate=_should_retry,
        initial=FIRST_BACKOFF_S,
        maximum=MAX_BACKOFF_S,
        multiplier=2.0,
        timeout=policy.deadline_s,
        on_error=on_error,
    )


_beam_throttling_handler = None


def _set_beam_gcs_retry(policy: RetryPolicy) -> None:
    """Beam's GCS filesystem takes the retry of every call from
    `gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER` when it is made; this sets it to the
    policy's, keeping Beam's throttling-seconds counter. Without the GCP extra: nothing to do."""
    global _beam_throttling_handler
    try:
        from apache_beam.io.gcp import gcsio_retry
    except ImportError:
        return
    if _beam_throttling_handler is None:
        _beam_throttling_handler = gcsio_retry.ThrottlingHandler()
    gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER = gcs_retry(policy)
