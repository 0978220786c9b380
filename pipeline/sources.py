"""What a run labels, as slices of path lists that the job reads itself: no process holds every
path.

`--input` is a folder, a glob or a bucket prefix, which the launcher lists as a stream into
listing files in staging (JSON lines, so any file name survives), or a manifest: a text file of
one path per line, a CSV file with a `path` column, or a Parquet file with a `path` column,
local or in a bucket. Either way the job gets
`PathSource`s, each a slice that one worker reads and labels as one or more groups of at most
GROUP_SIZE files: a byte range of a text file (a line belongs to the range in which it starts,
as in Beam's text source), or a row group of a Parquet file. The launcher only reads a
manifest's size, its first bytes (or its Parquet footer) to plan the slices.
"""

import collections
import contextlib
import csv
import functools
import glob
import io
import itertools
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.storage import is_bucket_root

GROUP_SIZE = 4_096  # files labelled and written as one Parquet file, at most (--files_per_group)
MIN_GROUP_SIZE = 256  # a group is a few full batches at least
TARGET_GROUPS = 16  # a small input is still split this many ways, to keep a few workers busy
SMALL_INPUT = TARGET_GROUPS * GROUP_SIZE  # paths a listing holds before it streams
GROUPS_PER_LISTING_FILE = 256  # about a million paths, 100 MB, per listing file
SAMPLE_BYTES = 64 * 1024  # of a text manifest, to estimate its line length
MIN_RANGE_BYTES = 256  # of a text manifest, per slice
MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
GLOB_CHARACTERS = "*?["
DEFAULT_EXTENSIONS = ("wav",)  # --extensions
# Audio that libsndfile decodes: when --extensions matches nothing, these are looked for, to
# name the flag that would find them.
AUDIO_EXTENSIONS = (
    "wav",
    "flac",
    "ogg",
    "oga",
    "opus",
    "mp3",
    "aif",
    "aiff",
    "aifc",
    "au",
    "caf",
    "w64",
)
OTHER_AUDIO_LIMIT = 100_000  # files counted for that message, at most
LISTING_DIR = "_inputs"


class ListingError(OSError):
    """A folder under --input could not be listed, so its files cannot all be named."""


class ManifestError(ValueError):
    """A manifest that cannot be read as one: no `path` column, an unreadable header."""


@dataclass(frozen=True)
class PathSource:
    """A slice of a path list: bytes [start, stop) of a text file (kind `listing`, `text`,
    `csv`), or row group `start` of a Parquet file (kind `parquet`). `column` is the CSV column
    index of the paths; `base` is the folder a relative path is relative to."""

    path: str
    kind: str
    start: int
    stop: int
    column: int = 0
    base: str = ""
    group_size: int = GROUP_SIZE  # the slice is labelled in groups of at most this many files


@dataclass(frozen=True)
class InputPlan:
    """The slices of one run's input, and how many files they hold (exact for a listing or a
    Parquet manifest, estimated from the size for a text or CSV manifest)."""

    sources: list[PathSource]
    files: int
    exact: bool


@functools.cache
def suffixes(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """`.EXT` of each extension: built once per run, not once per file listed."""
    return tuple("." + extension for extension in extensions)


def has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    """Whether `path` ends in `.EXT` for one of `extensions` (lower case, no dot), in any
    letter case."""
    return path.lower().endswith(suffixes(extensions))


def is_manifest(input_path: str) -> bool:
    return input_path.lower().endswith(MANIFEST_SUFFIXES) and not any(
        char in input_path for char in GLOB_CHARACTERS
    )


def parse_extensions(text: str) -> tuple[str, ...]:
    """`--extensions`: "wav,FLAC,.mp3" -> ("wav", "flac", "mp3"); ValueError when it names none."""
    extensions = tuple(
        dict.fromkeys(part.strip().lstrip(".").lower() for part in text.split(",") if part.strip())
    )
    if not extensions or not all(extensions):
        raise ValueError(f"--extensions names no extension: {text!r}")
    return extensions


def plan_input(
    input_path: str,
    staging: str,
    group_size: int = GROUP_SIZE,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
) -> InputPlan:
    """The slices of --input: a manifest's, or those of its listing of the files with these
    `extensions`, written under staging; each labelled in groups of at most `group_size` files."""
    if is_manifest(input_path):
        return plan_manifest(input_path, group_size)
    listing_dir = FileSystems.join(staging, LISTING_DIR)
    return write_listing(list_input(input_path, extensions), listing_dir, group_size)


# Listing


def list_input(input_path: str, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> Iterator[str]:
    """Every file an --input names, as an absolute local path or a full URI, as it is found: an
    existing path as it is (a directory's entries with one of `extensions`, recursively, or one
    file), else a glob, else a bucket prefix's objects with one of `extensions`.

    Local directories are walked here rather than through Beam's listing, which silently skips
    entries it cannot stat: a broken symlink, or a directory named `x.wav`, gets a row too. A
    sub-folder that cannot be listed stops the run (ListingError) rather than vanish. Local globs
    are matched by Python's `glob`, which also keeps entries that cannot be stat'ed.
    """
    is_local = FileSystems.get_scheme(input_path) is None
    is_glob = any(char in input_path for char in GLOB_CHARACTERS)
    if is_local:
        input_path = os.path.abspath(input_path)  # one spelling per file, for --skip_existing
    if is_local and os.path.isdir(input_path):
        yield from walk_audio_files(input_path, extensions)
    elif is_local and os.path.lexists(input_path):
        yield input_path
    elif is_local and is_glob:
        for match in glob.iglob(input_path, recursive=True):
            if not os.path.isdir(match) or has_extension(match, extensions):
                yield match
    elif is_glob:
        for match in FileSystems.match([input_path])[0].metadata_list:
            yield match.path
    elif (
        not input_path.endswith("/")
        and not is_bucket_root(input_path)
        and FileSystems.exists(input_path)
    ):
        yield input_path
    else:
        prefix = input_path.rstrip("/") + "/"
        yield from (path for path in list_prefix(prefix) if has_extension(path, extensions))


def walk_audio_files(directory: str, extensions: tuple[str, ...]) -> Iterator[str]:
    """The entries with one of `extensions` (any letter case; files or not) under a local
    directory, each folder's sorted, each folder before its sub-folders.

    Links to folders are followed, as data sets are often put together from several disks with
    them; each real folder is listed once, by the first path that reaches it, so a link loop or
    two links to one folder never list a file twice. The paths are as reached, not resolved. A
    broken link with one of `extensions` is listed (its row says it is broken); other broken
    links, which may have led to folders, are counted in a warning.
    """
    visited: set[tuple[int, int]] = set()
    broken_links = 0
    pending = [directory]
    while pending:
        folder = pending.pop()
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            raise ListingError(f"cannot list {error.filename}: {error.strerror}") from error
        subfolders = []
        for entry in entries:
            if has_extension(entry.name, extensions):
                yield entry.path
            if entry.is_dir():  # follows a link
                subfolders.append(entry.path)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                broken_links += not has_extension(entry.name, extensions)
        pending.extend(reversed(subfolders))
    if broken_links:
        logging.getLogger(__name__).warning(
            "skipped %d broken symbolic link%s under %s (their targets do not exist)",
            broken_links,
            "" if broken_links == 1 else "s",
            directory,
        )


def count_other_audio(
    input_path: str, extensions: tuple[str, ...], limit: int = OTHER_AUDIO_LIMIT
) -> collections.Counter:
    """How many files of each AUDIO_EXTENSIONS kind but `extensions` a folder or bucket prefix
    holds (the first `limit` found): what to name when --extensions matched none."""
    others = tuple(extension for extension in AUDIO_EXTENSIONS if extension not in extensions)
    counts: collections.Counter = collections.Counter()
    if any(char in input_path for char in GLOB_CHARACTERS) or is_manifest(input_path):
        return counts
    for path in itertools.islice(list_input(input_path, others), limit):
        counts[path.rsplit(".", 1)[-1].lower()] += 1
    return counts


def no_input_message(input_path: str, extensions: tuple[str, ...]) -> str:
    """Why --input gave no file, and the flag that would find the audio it holds."""
    chosen = ", ".join("." + extension for extension in extensions)
    counts = count_other_audio(input_path, extensions)
    if not counts:
        return f"no {chosen} files match --input {input_path}"
    found = ", ".join(f"{count:,} .{extension}" for extension, count in counts.most_common())
    if counts.total() >= OTHER_AUDIO_LIMIT:
        found += f" among the first {OTHER_AUDIO_LIMIT:,} audio files"
    return (
        f"no {chosen} files under {input_path}; found {found}:"
        f" add --extensions {','.join(extension for extension, _ in counts.most_common())}"
    )


def list_prefix(prefix: str) -> Iterator[str]:
    """Every object under a bucket prefix, page by page from the bucket's own client (Beam's
    `match` would return the whole listing at once); other filesystems through Beam."""
    from pipeline.storage import gcs_client, s3_client

    scheme = FileSystems.get_scheme(prefix)
    if scheme == "s3":
        from apache_beam.io.aws.s3io import parse_s3_path

        bucket, key = parse_s3_path(prefix, object_optional=True)
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            for entry in page.get("Contents", []):
                yield f"s3://{bucket}/{entry['Key']}"
    elif scheme == "gs":
        from apache_beam.io.gcp.gcsio import parse_gcs_path

        bucket, name = parse_gcs_path(prefix, object_optional=True)
        for blob in gcs_client().list_blobs(bucket, prefix=name):
            yield f"gs://{bucket}/{blob.name}"
    else:
        for match in FileSystems.match([prefix + "**"])[0].metadata_list:
            yield match.path


def small_input_groups(count: int, group_size: int = GROUP_SIZE) -> int:
    """Paths per group for an input of `count` files that fits in SMALL_INPUT."""
    return min(max(count // TARGET_GROUPS, MIN_GROUP_SIZE), group_size)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def write_listing(
    paths: Iterable[str], listing_dir: str, group_size: int = GROUP_SIZE
) -> InputPlan:
    """Write `paths` as JSON lines into listing files, one group's paths after another, and
    return the groups as byte ranges. Memory is bounded: the first SMALL_INPUT paths are held, so
    that a small input is sorted and split into TARGET_GROUPS groups of MIN_GROUP_SIZE to
    group_size files; past that, groups of group_size are written as they are found."""
    iterator = iter(paths)
    head = list(itertools.islice(iterator, SMALL_INPUT))
    size = group_size
    if len(head) < SMALL_INPUT:
        head.sort()
        size = small_input_groups(len(head), group_size)
    sources: list[PathSource] = []
    files = 0
    with contextlib.ExitStack() as stack:
        for index, group in enumerate(batched(itertools.chain(head, iterator), size)):
            if index % GROUPS_PER_LISTING_FILE == 0:
                stack.close()
                number = index // GROUPS_PER_LISTING_FILE
                listing = FileSystems.join(listing_dir, f"listing-{number:05d}.jsonl")
                file = stack.enter_context(FileSystems.create(listing))
                offset = 0
            data = b"".join(json.dumps(path).encode() + b"\n" for path in group)
            file.write(data)
            sources.append(
                PathSource(listing, "listing", offset, offset + len(data), group_size=size)
            )
            offset += len(data)
            files += len(group)
    return InputPlan(sources, files, exact=True)


# Manifests


def plan_manifest(manifest: str, group_size: int = GROUP_SIZE) -> InputPlan:
    if not FileSystems.exists(manifest):
        raise ManifestError(f"no such manifest: {manifest}")
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else os.getcwd()
    if FileSystems.get_scheme(manifest) is None:
        base = os.path.dirname(os.path.abspath(manifest))
    if manifest.lower().endswith(".parquet"):
        return plan_parquet(manifest, base, group_size)
    size = FileSystems.match([manifest])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(manifest) as file:
        sample = file.read(SAMPLE_BYTES)
    kind, column = "text", 0
    if manifest.lower().endswith(".csv"):
        kind, column = "csv", csv_path_column(manifest, sample)
    line_bytes = max(len(sample) / max(sample.count(b"\n"), 1), 1.0)
    range_bytes = max(int(group_size * line_bytes), MIN_RANGE_BYTES)
    sources = [
        PathSource(manifest, kind, start, min(start + range_bytes, size), column, base, group_size)
        for start in range(0, size, range_bytes)
    ]
    return InputPlan(sources, round(size / line_bytes), exact=False)


def csv_path_column(manifest: str, sample: bytes) -> int:
    header_line = sample.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    header = next(csv.reader([header_line]), [])
    if "path" not in header:
        raise ManifestError(f"{manifest}: the CSV header has no `path` column ({header[:5]})")
    return header.index("path")


def plan_parquet(manifest: str, base: str, group_size: int) -> InputPlan:
    """A slice per row group: a worker reads one row group whole, so its rows set the
    parallelism (write the manifest with row groups of a few groups' files)."""
    with FileSystems.open(manifest) as file:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        metadata = parquet.metadata
    if "path" not in names:
        raise ManifestError(f"{manifest}: the Parquet file has no `path` column ({names[:5]})")
    sources = [
        PathSource(manifest, "parquet", group, group + 1, base=base, group_size=group_size)
        for group in range(metadata.num_row_groups)
        if metadata.row_group(group).num_rows
    ]
    return InputPlan(sources, metadata.num_rows, exact=True)


# Reading a slice (in the job)


def read_source(source: PathSource) -> Iterator[str]:
    """The paths of one slice, in order: local paths absolute, URIs as they are."""
    if source.kind == "parquet":
        paths = read_parquet_paths(source)
    else:
        paths = read_text_paths(source)
    for path in paths:
        yield resolve(path, source.base)


def resolve(path: str, base: str) -> str:
    """A manifest's path: as it is if absolute or a URI, else relative to the manifest's folder."""
    if not base or FileSystems.get_scheme(path) is not None or path.startswith("/"):
        return path
    if FileSystems.get_scheme(base) is None:
        return os.path.normpath(os.path.join(base, path))
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"


def read_text_paths(source: PathSource) -> Iterator[str]:
    for offset, line in lines_in_range(source.path, source.start, source.stop):
        if source.kind == "listing":
            yield json.loads(line)
            continue
        text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if offset == 0 and text.startswith("\ufeff"):
            text = text[1:]
        if source.kind == "csv":
            if offset == 0:
                continue  # the header
            fields = next(csv.reader([text]), [])
            text = fields[source.column] if len(fields) > source.column else ""
        if text.strip():
            yield text


def lines_in_range(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line that starts in [start, stop) of a file."""
    with FileSystems.open(path) as raw:
        file = io.BufferedReader(raw, 1 << 20) if not isinstance(raw, io.BufferedIOBase) else raw
        position = start
        if start > 0:
            file.seek(start - 1)
            position = start - 1 + len(file.readline())  # the line in progress is the last slice's
        while position < stop:
            line = file.readline()
            if not line:
                return
            yield position, line
            position += len(line)


def read_parquet_paths(source: PathSource) -> Iterator[str]:
    with FileSystems.open(source.path) as file:
        parquet = pq.ParquetFile(file)
        batches = parquet.iter_batches(
            source.group_size, row_groups=[source.start], columns=["path"]
        )
        for batch in batches:
            yield from (path for path in batch.column(0).to_pylist() if path)
