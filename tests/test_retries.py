"""Which failures are tried again, for how long, and how they are counted (pipeline.retries);
whole runs through a failing bucket are in test_flaky_buckets.py."""

import time

import pytest
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import BeamIOError
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from google.api_core import exceptions as google_errors

from pipeline import retries


def s3_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (s3_error("SlowDown", 503), True),
        (s3_error("InternalError", 500), True),
        (s3_error("AccessDenied", 403), False),
        (s3_error("NoSuchKey", 404), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
        (S3ClientError("SlowDown", 503), True),
        (S3ClientError("Forbidden", 403), False),
        (google_errors.ServiceUnavailable("busy"), True),
        (google_errors.TooManyRequests("slow down"), True),
        (google_errors.NotFound("no such object"), False),
        (google_errors.Forbidden("no"), False),
        (ConnectionResetError(), True),
        (FileNotFoundError("gone"), False),
        (ValueError("not audio"), False),
        (BeamIOError("rename", {("a", "b"): S3ClientError("SlowDown", 503)}), True),
        (BeamIOError("rename", {("a", "b"): S3ClientError("Forbidden", 403)}), False),
    ],
)
def test_what_is_transient(error, transient):
    assert retries.is_transient(error) == transient


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(retries, "FIRST_BACKOFF_S", 0.001)
    retries.take_counts()


def failing(times: int, error: Exception):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return call, calls


def test_a_transient_failure_is_tried_again_and_counted(quick_backoff):
    call, calls = failing(2, ConnectionResetError())
    assert retries.retrying("test op", call) == "done"
    assert len(calls) == 3
    retried, failures = retries.take_counts()
    assert retried == {"test op": 2} and failures == {"test op": 2}
    assert retries.take_counts() == ({}, {})


def test_a_permanent_failure_is_not_tried_again(quick_backoff):
    call, calls = failing(1, s3_error("AccessDenied", 403))
    with pytest.raises(ClientError):
        retries.retrying("test op", call)
    assert len(calls) == 1 and retries.take_counts() == ({}, {})


def test_the_deadline_ends_the_retries_with_the_last_error(quick_backoff):
    call, calls = failing(10**6, s3_error("SlowDown", 503))
    started = time.monotonic()
    with pytest.raises(ClientError, match="SlowDown"):
        retries.retrying("test op", call, retries.RetryPolicy(deadline_s=0.2))
    assert time.monotonic() - started < 1.0 and len(calls) > 1
    retried, failures = retries.take_counts()
    assert failures["test op"] == len(calls) and retried["test op"] == len(calls) - 1


def test_the_policy_travels_in_the_pipeline_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--io_retries", "3", "--io_retry_deadline_s", "42"])
    travelled = options.get_all_options(drop_default=True)
    assert retries.RetryPolicy.from_options(travelled) == retries.RetryPolicy(3, 42.0)
    assert retries.RetryPolicy.from_options({}) == retries.RetryPolicy()


def test_counts_reach_beams_metrics_through_the_group_written(tmp_path, quick_backoff):
    """Requests retried in any thread of a worker (here: a step before WriteGroup) are counted
    into Beam's metrics by the next group written, once."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipeline.transforms import Group, JobSettings, WriteGroup

    def fetch_with_one_retry(group: Group) -> tuple[Group, list, list]:
        call, _ = failing(1, ConnectionResetError())
        retries.retrying("s3 GetObject", call)
        return group, [], []

    pipeline = beam.Pipeline(runner=fn_runner.FnApiRunner())
    _ = (
        pipeline
        | beam.Create([Group("0", []), Group("1", [])])
        | beam.Map(fetch_with_one_retry)
        | beam.ParDo(WriteGroup({}, JobSettings(None, "", 32, 60.0, str(tmp_path), "run")))
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        counter.key.metric.name: counter.committed
        for counter in result.metrics().query(MetricsFilter().with_namespace("yesno.io"))[
            "counters"
        ]
    }
    assert counters == {"retries s3 GetObject": 2, "transient_failures s3 GetObject": 2}


def test_the_policy_applies_without_the_bucket_extras(monkeypatch):
    """A plain `pip install .` has neither botocore nor Beam's GCS module: a local run must
    still start (the README's first command)."""
    import sys

    monkeypatch.setattr(retries, "_botocore_counting", False)
    for module in ("botocore", "apache_beam.io.gcp.gcsio_retry"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    retries.apply(retries.RetryPolicy())
    assert retries.current() == retries.RetryPolicy()
