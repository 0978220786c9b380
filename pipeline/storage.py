"""Open input recordings with one bucket client per worker process, not one per file.

Beam's S3 filesystem builds a new boto3 client for every file it opens (about 150 ms), and its
GCS filesystem a new storage client, with a new connection; for millions of small recordings that
is most of the job. Here an s3:// or gs:// recording is fetched whole into memory by a client
made once per process and configured from the same places Beam's filesystems read: the options
given to `FileSystems.set_options`, then the environment. Local paths, other schemes, and objects
too big to hold in memory go through Beam's own reader. The bucket libraries are imported only
when used: they come with optional extras (apache-beam[aws], apache-beam[gcp]).
"""

import functools
import io
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, S3Options
from apache_beam.options.value_provider import RuntimeValueProvider

from pipeline import retries

WHOLE_OBJECT_LIMIT = 64 * 1024 * 1024  # bytes; a larger object is streamed by Beam's reader
# Bucket objects fetched at once, ahead of decoding, by one worker: a slow or retried request
# then delays its own file, not the files behind it. At most this many objects (each at most
# WHOLE_OBJECT_LIMIT) are held in memory before they are decoded.
FETCH_AHEAD = 8
S3_OPTIONS = (  # what Beam's boto3 client is built from (apache_beam.io.aws.clients.s3)
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_session_token",
    "s3_endpoint_url",
    "s3_disable_ssl",
    "s3_region_name",
    "s3_api_version",
    "s3_verify",
)
GCS_OPTIONS = ("project", "impersonate_service_account")  # what selects the GCS credentials

_clients: dict[Hashable, Any] = {}
_clients_lock = threading.Lock()
_option_values: dict[type, tuple[object, tuple]] = {}


def open_input(path: str) -> BinaryIO:
    """A seekable binary file with the contents of `path`, whatever its filesystem."""
    scheme = FileSystems.get_scheme(path)
    if scheme == "s3":
        return _open_s3(path)
    if scheme == "gs":
        return _open_gcs(path)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def fetch_ahead(
    paths: Iterable[str], pool: ThreadPoolExecutor
) -> Iterator[tuple[str, Future | None]]:
    """Each path with its bucket object fetched (`open_input`) in `pool`, FETCH_AHEAD at a time,
    yielded as the fetches complete, so a slow or retried one holds back no other file (the
    order of a group's files does not matter: its rows are sorted). A local path comes at once,
    with None: it is read as it is decoded."""
    in_flight: dict[Future, str] = {}

    def completed() -> Iterator[tuple[str, Future]]:
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for fetched in done:
            yield in_flight.pop(fetched), fetched

    for path in paths:
        if FileSystems.get_scheme(path) is None:
            yield path, None
            continue
        if len(in_flight) == FETCH_AHEAD:
            yield from completed()
        in_flight[pool.submit(open_input, path)] = path
    while in_flight:
        yield from completed()


def is_bucket_root(path: str) -> bool:
    """Whether `path` names a whole bucket (`s3://bucket`, `gs://bucket/`), which has no
    parent and no object of its own, so Beam cannot test it with `exists`."""
    scheme = FileSystems.get_scheme(path)
    if scheme is None or FileSystems.get_filesystem(path).has_dirs():
        return False
    return "/" not in path.strip()[len(scheme) + 3 :].rstrip("/")


def filesystem_options() -> PipelineOptions | dict | None:
    """The options Beam builds its filesystems with, as `FileSystems.get_filesystem` finds them:
    those given to `set_options` (launcher, in-process runner), else the worker's runtime ones."""
    return FileSystems._pipeline_options or RuntimeValueProvider.runtime_options


def option_values(view: type[PipelineOptions], names: tuple[str, ...]) -> tuple:
    """The named options of the current filesystem options, read the way Beam reads them.

    Cached per options object: viewing PipelineOptions costs milliseconds, as much as a fetch.
    """
    options = filesystem_options()
    cached = _option_values.get(view)
    if cached is not None and cached[0] is options:
        return cached[1]
    if isinstance(options, PipelineOptions):
        viewed = options.view_as(view)
        values = tuple(getattr(viewed, name) for name in names)
    else:
        values = tuple((options or {}).get(name) for name in names)
    _option_values[view] = (options, values)
    return values


def cached_client(key: Hashable, make: Callable[[], Any]) -> Any:
    """The client for `key` in this process, made once even when threads race for it.

    The process id is part of the key: a forked child must not share its parent's connections.
    Both boto3 and google-cloud-storage clients are safe to share between threads.
    """
    key = (os.getpid(), key)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = make()
    return client


def share_botocore_models() -> None:
    """Let every botocore session of this process read its service models once.

    Beam's S3 filesystem makes a new boto3 session for every call (listing, each file written,
    each copy and delete of a commit), and each session loads and parses botocore's JSON models
    and endpoint rules again: about 130 ms a client against 11 ms with one loader for the
    process, most of a small bucket job's commit. The loader only reads the files botocore
    ships (or AWS_DATA_PATH's), so sessions can share it; there is one per data path. Without
    the AWS extra there is nothing to share."""
    try:
        from botocore import session
    except ImportError:
        return
    if not hasattr(session.create_loader, "cache_info"):
        session.create_loader = functools.cache(session.create_loader)


def s3_client() -> Any:
    """The process's boto3 S3 client for the current S3 options and retry policy; boto3 reads
    the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3, profiles, ...) for whatever they
    leave unset."""
    values = option_values(S3Options, S3_OPTIONS)
    attempts = retries.current().attempts

    def make() -> Any:
        import boto3
        from botocore.config import Config

        key_id, secret, token, endpoint, disable_ssl, region, api_version, verify = values
        return boto3.session.Session().client(
            "s3",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            endpoint_url=endpoint,
            use_ssl=not disable_ssl,
            region_name=region,
            api_version=api_version,
            verify=verify,
            config=Config(retries={"mode": "standard", "max_attempts": attempts}),
        )

    return cached_client(("s3", values, attempts), make)


def gcs_client() -> Any:
    """The process's google-cloud-storage client, made by Beam's own factory (Google default
    credentials, impersonation, STORAGE_EMULATOR_HOST) for the current options and emulator."""
    values = option_values(GoogleCloudOptions, GCS_OPTIONS)

    def make() -> Any:
        from apache_beam.io.gcp.gcsio import create_storage_client

        options = filesystem_options()
        if not isinstance(options, PipelineOptions):
            options = PipelineOptions.from_dictionary(options or {})
        return create_storage_client(options)

    return cached_client(("gs", values, os.environ.get("STORAGE_EMULATOR_HOST")), make)


def _open_s3(path: str) -> BinaryIO:
    """One GET for the whole object; its length is known before the body is read. botocore
    retries the request; a body cut off mid-read is fetched again (retries.retrying)."""
    from apache_beam.io.aws.s3io import parse_s3_path

    bucket, key = parse_s3_path(path)

    def fetch() -> BinaryIO:
        response = s3_client().get_object(Bucket=bucket, Key=key)
        if response["ContentLength"] > WHOLE_OBJECT_LIMIT:
            response["Body"].close()
            return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        with response["Body"] as body:
            return io.BytesIO(body.read())

    return retries.retrying("s3 GetObject body", fetch)


def _open_gcs(path: str) -> BinaryIO:
    """The object's metadata, then its contents at that generation (so the two agree)."""
    from apache_beam.io.gcp.gcsio import parse_gcs_path

    bucket, name = parse_gcs_path(path)
    retry = retries.gcs_retry()
    blob = gcs_client().bucket(bucket).get_blob(name, retry=retry)
    if blob is None:
        raise FileNotFoundError(f"no such object: {path}")
    if blob.size > WHOLE_OBJECT_LIMIT:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return io.BytesIO(blob.download_as_bytes(retry=retry))


def write_atomically(path: str, data: bytes) -> None:
    """Write a file under a temporary name, then rename it into place: a reader (or a retry)
    never sees half a file, locally or on a bucket. Written again after a transient failure."""
    temporary = f"{path}.tmp"

    def write() -> None:
        with FileSystems.create(temporary) as file:
            file.write(data)
        FileSystems.rename([temporary], [path])

    retries.retrying("write", write)
