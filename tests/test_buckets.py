"""s3:// and gs:// end to end, against real API servers on loopback: moto's S3 server and
gcp-storage-emulator. Fake credentials and an unreachable metadata host make sure nothing can
reach a real cloud (and nothing waits on a metadata server)."""

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import storage as gcs

from model.contract import LABELS
from pipeline import output
from pipeline import storage as input_storage
from pipeline.cli import main
from pipeline.labels import ROW_SCHEMA
from pipeline.loading import WindowReader
from pipeline.sources import list_input, write_listing
from tests.helpers import first_test_clip, read_output, tone
from tests.servers import free_port, local_server, offline_cloud_environment

BROKEN = "broken.wav"


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


RECORDINGS = {  # object name under the input prefix -> contents
    "tone_16k.wav": wav_bytes(tone(440, 1.0, 16_000), 16_000),
    "nested/TONE_8K.WAV": wav_bytes(tone(300, 0.5, 8_000), 8_000),
    "stereo_44k.wav": wav_bytes(np.stack([tone(200, 1.5, 44_100)] * 2, axis=1), 44_100),
    BROKEN: b"this is not audio\n" * 10,
}
NOT_LISTED = {"notes.txt": b"not named .wav: not an input"}


@pytest.fixture(scope="module")
def offline_cloud(tmp_path_factory) -> Iterator[None]:
    """Fake credentials for both clouds: keys for S3, and an application-default credentials
    file whose token never expires (so no token server is asked); no metadata server."""
    environment = offline_cloud_environment(tmp_path_factory.mktemp("offline_cloud"))
    previous_options = FileSystems._pipeline_options
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)  # a developer's own settings must not leak in
        for name, value in environment.items():
            patch.setenv(name, value)
        yield
    FileSystems.set_options(previous_options)


@pytest.fixture(scope="module")
def s3_endpoint(offline_cloud) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with local_server(command, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gcs_endpoint(offline_cloud) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "gcp_storage_emulator", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    endpoint = f"http://127.0.0.1:{port}"
    with local_server(command, port), pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        yield endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("audio-in", "labels-out"):
        client.create_bucket(Bucket=bucket)
    for name, contents in {**RECORDINGS, **NOT_LISTED}.items():
        client.put_object(Bucket="audio-in", Key=f"calls/{name}", Body=contents)
    return client


@pytest.fixture(scope="module")
def gcs_client(gcs_endpoint) -> gcs.Client:
    client = gcs.Client()
    for bucket in ("audio-in", "labels-out"):
        client.create_bucket(bucket)
    for name, contents in {**RECORDINGS, **NOT_LISTED}.items():
        client.bucket("audio-in").blob(f"calls/{name}").upload_from_string(contents)
    return client


def s3_options(endpoint: str) -> list[str]:
    return ["--s3_endpoint_url", endpoint, "--s3_region_name", "us-east-1"]


def s3_keys(client, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])


def check_output(keys: list[str], read, uri: str) -> list[dict]:
    """The dataset under `uri` (object names `keys`, bodies by `read`): one row per recording,
    the broken one with its error, the summary, and no staging left behind."""
    prefix = uri.split("/", 3)[3]
    assert not [key for key in keys if ".staging-" in key]
    parquet = [key for key in keys if key.startswith(f"{prefix}/{output.PARQUET_PREFIX}")]
    assert parquet and f"{prefix}/{output.SUMMARY_FILE}" in keys
    summary = json.loads(read(f"{prefix}/{output.SUMMARY_FILE}"))
    assert summary["files"] == len(RECORDINGS) and summary["errors"] == 1
    rows = []
    for key in parquet:
        table = pq.read_table(io.BytesIO(read(key)))
        assert table.schema.remove_metadata() == ROW_SCHEMA.remove_metadata()
        rows += table.to_pylist()
    scheme = uri.split(":")[0]
    expected = sorted(f"{scheme}://audio-in/calls/{name}" for name in RECORDINGS)
    assert sorted(row["path"] for row in rows) == expected
    for row in rows:
        if row["path"].endswith(BROKEN):
            assert row["label"] is None and row["error"].startswith("unreadable_audio: ")
        else:
            assert row["error"] is None and row["label"] in LABELS
    return rows


def test_s3_input_and_output_through_the_cli(s3, s3_endpoint):
    uri = "s3://labels-out/labels"
    stale = "labels/labels-earlier-00000.parquet"  # listed by the earlier summary: replaced
    foreign = "labels/labels-by-someone-else.parquet"  # listed by no summary: left alone
    for key in (stale, foreign):
        s3.put_object(Bucket="labels-out", Key=key, Body=b"not even Parquet")
    earlier_summary = {"parquet_files": ["labels-earlier-00000.parquet"]}
    s3.put_object(Bucket="labels-out", Key="labels/_summary.json", Body=json.dumps(earlier_summary))
    keys = ["--s3_access_key_id", "testing", "--s3_secret_access_key", "testing"]
    argv = ["--input", "s3://audio-in/calls/", "--output", uri, *s3_options(s3_endpoint), *keys]
    assert main(argv) == 0

    def read(key: str) -> bytes:
        return s3.get_object(Bucket="labels-out", Key=key)["Body"].read()

    written = s3_keys(s3, "labels-out")
    assert stale not in written and foreign in written
    s3.delete_object(Bucket="labels-out", Key=foreign)
    check_output(s3_keys(s3, "labels-out"), read, uri)


def test_s3_events_are_committed_with_the_labels(s3, s3_endpoint):
    prefix, events_prefix = "with-events", "with-events-events"
    keys = ["--s3_access_key_id", "testing", "--s3_secret_access_key", "testing"]
    argv = ["--input", "s3://audio-in/calls/", "--output", f"s3://labels-out/{prefix}"]
    argv += ["--events", f"s3://labels-out/{events_prefix}", *s3_options(s3_endpoint), *keys]

    def summary(of: str) -> dict:
        body = s3.get_object(Bucket="labels-out", Key=f"{of}/{output.SUMMARY_FILE}")["Body"]
        return json.loads(body.read())

    for rerun in ([], ["--skip_existing"]):
        assert main(argv + rerun) == 0
        labels, events = summary(prefix), summary(events_prefix)
        assert events["run_id"] == labels["run_id"] == labels["events"]["run_id"]
        written = s3_keys(s3, "labels-out")
        assert not [key for key in written if ".staging-" in key]
        event_files = [
            k for k in written if k.startswith(f"{events_prefix}/{output.EVENTS_PREFIX}")
        ]
        assert sorted(f"{events_prefix}/{name}" for name in events["parquet_files"]) == event_files
    assert labels["files_kept_from_earlier_output"] == len(RECORDINGS) - 1  # all but the broken


def test_credentials_never_reach_the_output_or_the_logs(s3, s3_endpoint, capfd):
    """Keys given as options are used (moto accepts any) and written nowhere: not in the summary,
    the report, the events dataset, any Parquet file, nor what the run prints."""
    key_id, secret = "AKIDSECRETPROBE12345", "probe-secret-Zq9v/Xw8+u7T6"
    argv = ["--input", "s3://audio-in/calls/", "--output", "s3://labels-out/private"]
    argv += ["--events", "s3://labels-out/private-events", *s3_options(s3_endpoint)]
    argv += ["--s3_access_key_id", key_id, "--s3_secret_access_key", secret]
    assert main(argv) == 0
    printed = capfd.readouterr()
    written = [k for k in s3_keys(s3, "labels-out") if k.startswith("private")]
    assert any(k.endswith(output.REPORT_FILE) for k in written) and len(written) >= 4
    for text in [printed.out, printed.err] + [
        s3.get_object(Bucket="labels-out", Key=key)["Body"].read().decode("latin-1")
        for key in written
    ]:
        assert key_id not in text and secret not in text


def test_gcs_input_and_output_through_the_cli_and_a_rerun_replaces_it(gcs_client):
    uri = "gs://labels-out/labels"

    def read(name: str) -> bytes:
        return gcs_client.bucket("labels-out").blob(name).download_as_bytes()

    def names() -> list[str]:
        return sorted(blob.name for blob in gcs_client.list_blobs("labels-out"))

    assert main(["--input", "gs://audio-in/calls/", "--output", uri]) == 0
    first_names = names()
    first = check_output(first_names, read, uri)
    assert main(["--input", "gs://audio-in/calls", "--output", uri + "/"]) == 0
    second_names = names()
    second = check_output(second_names, read, uri)
    assert len(second) == len(first)
    kept = set(first_names) & set(second_names)
    rewritten = {f"labels/{output.SUMMARY_FILE}", f"labels/{output.REPORT_FILE}"}
    assert kept == rewritten  # every Parquet file is new


@pytest.mark.parametrize(
    "input_path, expected",
    [
        ("s3://audio-in", RECORDINGS),
        ("s3://audio-in/", RECORDINGS),
        ("s3://audio-in/calls/nested/TONE_8K.WAV", ["nested/TONE_8K.WAV"]),
    ],
)
def test_listing_a_bucket(s3, s3_endpoint, input_path, expected):
    FileSystems.set_options(PipelineOptions(s3_options(s3_endpoint)))
    assert sorted(list_input(input_path)) == sorted(f"s3://audio-in/calls/{n}" for n in expected)


def test_a_prefix_is_listed_page_by_page_and_a_manifest_can_live_in_a_bucket(s3, s3_endpoint):
    s3.create_bucket(Bucket="many-in")
    for index in range(1_001):  # S3 lists 1,000 keys a page
        s3.put_object(Bucket="many-in", Key=f"many/{index:04d}.wav", Body=b"")
    FileSystems.set_options(PipelineOptions(s3_options(s3_endpoint)))
    listed = list(list_input("s3://many-in/many/"))
    assert listed == [f"s3://many-in/many/{index:04d}.wav" for index in range(1_001)]

    # Relative to the manifest's own prefix, or a full URI.
    manifest = (
        "../calls/tone_16k.wav\ns3://audio-in/calls/nested/TONE_8K.WAV\n../calls/broken.wav\n"
    )
    s3.put_object(Bucket="audio-in", Key="lists/manifest.txt", Body=manifest.encode())
    argv = ["--input", "s3://audio-in/lists/manifest.txt", "--output", "s3://labels-out/listed"]
    assert main([*argv, *s3_options(s3_endpoint)]) == 0
    body = s3.get_object(Bucket="labels-out", Key=f"listed/{output.SUMMARY_FILE}")["Body"]
    summary = json.loads(body.read())
    assert (summary["files"], summary["errors"]) == (3, 1)


def test_open_input_makes_one_s3_client_per_process(s3, s3_endpoint, monkeypatch):
    made = []
    make_client = boto3.session.Session.client
    monkeypatch.setattr(input_storage, "_clients", {})
    monkeypatch.setattr(
        boto3.session.Session, "client", lambda *a, **k: made.append(1) or make_client(*a, **k)
    )
    FileSystems.set_options(PipelineOptions(s3_options(s3_endpoint)))
    for name in ("tone_16k.wav", "stereo_44k.wav", BROKEN):
        with input_storage.open_input(f"s3://audio-in/calls/{name}") as file:
            assert file.read() == RECORDINGS[name]
            assert file.seek(0) == 0 and file.read(4) == RECORDINGS[name][:4]
    assert len(made) == 1
    assert input_storage.s3_client() is input_storage.s3_client()


def test_open_input_makes_one_gcs_client_per_process(gcs_client, monkeypatch):
    from apache_beam.io.gcp import gcsio

    made = []
    make_client = gcsio.create_storage_client
    monkeypatch.setattr(input_storage, "_clients", {})
    monkeypatch.setattr(
        gcsio, "create_storage_client", lambda *a, **k: made.append(1) or make_client(*a, **k)
    )
    FileSystems.set_options(PipelineOptions([]))
    for name in ("tone_16k.wav", BROKEN):
        with input_storage.open_input(f"gs://audio-in/calls/{name}") as file:
            assert file.read() == RECORDINGS[name]
    assert len(made) == 1


def test_s3_settings_from_the_environment(s3, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    FileSystems.set_options(PipelineOptions([]))
    with input_storage.open_input("s3://audio-in/calls/tone_16k.wav") as file:
        assert file.read() == RECORDINGS["tone_16k.wav"]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_large_objects_are_streamed_by_beam(s3, gcs_client, s3_endpoint, monkeypatch, scheme):
    monkeypatch.setattr(input_storage, "WHOLE_OBJECT_LIMIT", 100)
    FileSystems.set_options(PipelineOptions(s3_options(s3_endpoint)))
    with input_storage.open_input(f"{scheme}://audio-in/calls/tone_16k.wav") as file:
        assert not isinstance(file, io.BytesIO)
        assert file.seek(0, io.SEEK_END) == len(RECORDINGS["tone_16k.wav"])
        file.seek(0)
        assert file.read() == RECORDINGS["tone_16k.wav"]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_missing_object_is_an_error_row(s3, gcs_client, s3_endpoint, scheme):
    FileSystems.set_options(PipelineOptions(s3_options(s3_endpoint)))
    reader = WindowReader(f"{scheme}://audio-in/calls/gone.wav", max_duration_s=60)
    assert list(reader.runs()) == []
    assert reader.info.error.startswith("unreadable_file: ")


def test_commit_to_a_bucket_root_stages_inside_it(gcs_client):
    """A whole bucket has no sibling for its staging prefix: it is a hidden prefix inside."""
    FileSystems.set_options(PipelineOptions([]))
    bucket = gcs_client.create_bucket("labels-root")
    bucket.blob("labels-old-00000.parquet").upload_from_string(b"stale")
    bucket.blob("_summary.json").upload_from_string(
        json.dumps({"parquet_files": ["labels-old-00000.parquet"]})
    )
    staging = output.staging_dir("gs://labels-root", "new")
    assert staging == "gs://labels-root/.staging-new"
    write_listing(["gs://audio-in/calls/tone_16k.wav"], f"{staging}/_inputs")
    output.write_parquet(output.group_file(staging, "new", "00000"), [], ROW_SCHEMA)
    output.write_summary(staging, {"files": 0})
    output.commit(staging, "gs://labels-root/")
    names = sorted(blob.name for blob in gcs_client.list_blobs("labels-root"))
    assert names == ["_summary.json", "labels-new-00000.parquet"]


def test_other_formats_in_a_bucket_are_labelled_as_the_same_files_on_disk(
    s3, s3_endpoint, data_dir, tmp_path
):
    """FLAC, OGG and MP3 objects chosen by --extensions, decoded from the bucket as from disk."""
    s3.create_bucket(Bucket="formats-in")
    local = tmp_path / "local"
    local.mkdir()
    for word in ("yes", "no"):
        for extension, (audio_format, subtype) in {
            "flac": ("FLAC", "PCM_16"),
            "ogg": ("OGG", "VORBIS"),
            "mp3": ("MP3", "MPEG_LAYER_III"),
            "wav": ("WAV", "PCM_16"),  # not chosen: not labelled
        }.items():
            path = local / f"{word}.{extension}"
            soundfile.write(
                path, first_test_clip(data_dir, word), 16_000, subtype, format=audio_format
            )
            s3.put_object(Bucket="formats-in", Key=f"calls/{path.name}", Body=path.read_bytes())
    (local / "yes.wav").unlink()
    (local / "no.wav").unlink()
    chosen = ["--extensions", "flac,ogg,mp3"]
    argv = ["--input", "s3://formats-in/calls/", "--output", str(tmp_path / "from_bucket")]
    assert main([*argv, *chosen, *s3_options(s3_endpoint)]) == 0
    assert main(["--input", str(local), "--output", str(tmp_path / "from_disk"), *chosen]) == 0
    from_bucket = read_output(tmp_path / "from_bucket")
    from_disk = read_output(tmp_path / "from_disk")
    assert [row["path"].rsplit("/", 1)[1] for row in from_bucket] == sorted(
        path.name for path in local.iterdir()
    )
    for bucket_row, disk_row in zip(from_bucket, from_disk, strict=True):
        spoken = Path(disk_row["path"]).stem
        assert (bucket_row["label"], bucket_row["error"]) == (spoken, None)
        # Windows are batched as files arrive; a batch's size can move a score's last bits.
        for label in LABELS:
            score = disk_row[f"score_{label}"]
            assert bucket_row[f"score_{label}"] == pytest.approx(score, abs=1e-5)


def test_the_sessions_beam_makes_for_each_call_share_one_model_loader(s3, s3_endpoint):
    """Beam's S3 filesystem makes a boto3 session per call; after share_botocore_models they
    read botocore's models through one loader, and a client made so still works."""
    input_storage.share_botocore_models()
    input_storage.share_botocore_models()  # idempotent: wraps botocore's factory once
    first, second = boto3.session.Session(), boto3.session.Session()
    loaders = [session._session.get_component("data_loader") for session in (first, second)]
    assert loaders[0] is loaders[1]
    client = second.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket="audio-in", Prefix="calls/")["Contents"]
    assert {item["Key"] for item in listed} >= {f"calls/{name}" for name in RECORDINGS}
