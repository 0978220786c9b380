"""The Beam job end to end on a folder of real and broken recordings, in and across processes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from model.contract import DEFAULT_ARTIFACT
from pipeline.cli import main
from pipeline.run import read_model_version
from pipeline.sources import list_input
from pipeline.transforms import Group, JobSettings, LabelGroup, path_to_bytes
from tests.helpers import assert_same_rows, read_output, wav_files

ERROR_KINDS = {
    "empty.wav": "empty_file",
    "text.wav": "unreadable_audio",
    "truncated.wav": "unreadable_audio",
    "no_frames.wav": "no_samples",
    "nan.wav": "non_finite_samples",
}


def check_rows(expected_paths: list[str]):
    def check(rows):
        by_name = {Path(row["path"]).name: row for row in rows}
        assert sorted(row["path"] for row in rows) == expected_paths
        for name, row in by_name.items():
            if name in ERROR_KINDS:
                assert row["label"] is None and row["score_yes"] is None
                assert row["error"].startswith(ERROR_KINDS[name] + ": ")
            else:
                assert row["error"] is None, row
                assert row["label"] in {"yes", "no", "unknown", "silence"}

    return check


def test_listing_finds_wav_in_any_case_recursively_and_nothing_else(recordings):
    assert sorted(list_input(str(recordings))) == wav_files(recordings)


@pytest.mark.parametrize("num_groups", [1, 3])
def test_label_group_gives_one_row_per_path(recordings, num_groups):
    paths = wav_files(recordings)
    groups = [
        Group(str(group), [path_to_bytes(path) for path in paths[group::num_groups]])
        for group in range(num_groups)
    ]
    job = JobSettings(
        model_dir=str(DEFAULT_ARTIFACT),
        model_version=read_model_version(DEFAULT_ARTIFACT),
        batch_size=4,  # small batches: many of them, long files spanning several
        max_duration_s=60,
        staging="",  # no progress records
        run_id="test",
    )
    label_group = LabelGroup({}, job)
    with BeamTestPipeline(runner=fn_runner.FnApiRunner()) as pipeline:
        rows = (
            pipeline
            | beam.Create(groups)
            | beam.ParDo(label_group)
            | beam.FlatMapTuple(lambda group, rows, events: rows)
        )
        assert_that(rows, check_rows(paths))


@pytest.fixture(scope="module")
def in_process_rows(recordings, tmp_path_factory) -> list[dict]:
    output = tmp_path_factory.mktemp("in_process")
    assert main(["--input", str(recordings), "--output", str(output)]) == 0
    return read_output(output)


def test_cli_writes_the_parquet_contract(in_process_rows, recordings, capsys):
    check_rows(wav_files(recordings))(in_process_rows)
    by_name = {Path(row["path"]).name: row for row in in_process_rows}
    stereo = by_name["yes_44k_stereo.wav"]
    assert (stereo["sample_rate"], stereo["channels"]) == (44_100, 2)
    assert by_name["no_late_in_6s.wav"]["duration_s"] == pytest.approx(6.0, abs=0.01)
    assert {row["model_version"] for row in in_process_rows} == {
        read_model_version(DEFAULT_ARTIFACT)
    }
    for row in in_process_rows:
        if row["error"] is None:
            scores = [row[f"score_{label}"] for label in ("yes", "no", "unknown", "silence")]
            assert sum(scores) == pytest.approx(1, abs=1e-4)


def test_a_format_or_rate_change_barely_moves_the_scores(in_process_rows):
    by_name = {Path(row["path"]).name: row for row in in_process_rows}
    original, converted = by_name["yes_16k.wav"], by_name["yes_44k_stereo.wav"]
    assert converted["label"] == original["label"]
    assert converted["score_yes"] == pytest.approx(original["score_yes"], abs=0.05)


def test_a_keyword_late_in_a_long_recording_is_found(in_process_rows):
    by_name = {Path(row["path"]).name: row for row in in_process_rows}
    assert by_name["no_late_in_6s.wav"]["label"] == by_name["NO_UPPER.WAV"]["label"]


def test_rerun_to_the_same_output_replaces_it(recordings, tmp_path, capsys):
    output = tmp_path / "out"
    for _ in range(2):
        assert main(["--input", str(recordings / "nested"), "--output", str(output)]) == 0
    assert len(pq.read_table(output)) == 1
    assert "1 files" in capsys.readouterr().out


def test_installed_command_multi_process_gives_the_same_rows(in_process_rows, recordings, tmp_path):
    """From the folder, then a --skip_existing rerun from a manifest of it (the join in the job)."""
    command = Path(sys.executable).parent / "yesno-label"
    if not command.exists():
        pytest.fail("yesno-label is not installed: pip install '.[test]'")
    output = tmp_path / "multi"
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(wav_files(recordings)) + "\n")
    multi_process = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    for inputs in (["--input", str(recordings)], ["--input", str(manifest), "--skip_existing"]):
        completed = subprocess.run(
            [str(command), *inputs, "--output", str(output), *multi_process],
            cwd=tmp_path,  # away from the checkout: the installed package must carry its model
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr
        assert f"{len(in_process_rows)} files" in completed.stdout
        assert_same_rows(read_output(output), in_process_rows)
    errors = sum(row["error"] is not None for row in in_process_rows)
    assert f"({len(in_process_rows) - errors} kept from the earlier output)" in completed.stdout


def test_the_tensorflow_runtime_gives_the_same_rows_as_onnx(in_process_rows, recordings, tmp_path):
    """--runtime tensorflow scores with the SavedModel that model.onnx is checked against.

    Real speech agrees to 1e-6 (and to model.export.onnx_export.TOLERANCE, 1e-4, on every val and
    test clip checked in test_model_contract); hum.wav, a 50 Hz hum one 8-bit step high, differs by
    1.3e-4: near digital silence the log of a tiny float32 spectrum magnifies each runtime's
    rounding. Labels must not change."""
    output = tmp_path / "tensorflow"
    args = ["--input", str(recordings), "--output", str(output), "--runtime", "tensorflow"]
    assert main(args) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["runtime"] == "tensorflow"
    assert_same_rows(read_output(output), in_process_rows, tolerance=1e-3)


def test_an_input_that_matches_nothing_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "only.txt").write_text("no recordings here")
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert f"no .wav files match --input {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_run_leaves_the_previous_output_untouched(recordings, tmp_path):
    output = tmp_path / "out"
    assert main(["--input", str(recordings / "nested"), "--output", str(output)]) == 0
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    broken_model = tmp_path / "broken_model"  # metadata, but no SavedModel: workers fail
    broken_model.mkdir()
    (broken_model / "metadata.json").write_bytes((DEFAULT_ARTIFACT / "metadata.json").read_bytes())
    with pytest.raises(Exception, match=r"saved_model|SavedModel"):
        main(["--input", str(recordings), "--output", str(output), "--model", str(broken_model)])
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken_model", "out"]


def test_skip_existing_labels_only_new_files_and_keeps_the_rest(recordings, tmp_path):
    folder = tmp_path / "growing"
    shutil.copytree(recordings / "nested", folder / "first")
    output = tmp_path / "out"
    assert main(["--input", str(folder), "--output", str(output)]) == 0
    first_rows = read_output(output)
    shutil.copy(recordings / "go.wav", folder / "go.wav")
    shutil.copy(recordings / "empty.wav", folder / "empty.wav")
    assert main(["--input", str(folder), "--output", str(output), "--skip_existing"]) == 0
    rows = read_output(output)
    assert [row["path"] for row in rows] == wav_files(folder)
    assert [row for row in rows if row["path"] == first_rows[0]["path"]] == first_rows
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["files"] == 3
    assert summary["files_labelled_this_run"] == 2
    assert summary["files_kept_from_earlier_output"] == 1
    assert summary["errors_by_kind"] == {"empty_file": 1}


def test_the_summary_file_records_the_run(in_process_rows, recordings, keyword_model, tmp_path):
    output = tmp_path / "out"
    assert main(["--input", str(recordings), "--output", str(output)]) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["files"] == len(in_process_rows) == summary["files_labelled_this_run"]
    assert sum(summary["labels"].values()) + summary["errors"] == summary["files"]
    assert summary["errors_by_kind"] == {
        "empty_file": 1,
        "no_samples": 1,
        "non_finite_samples": 1,
        "unreadable_audio": 2,
    }
    assert summary["model_version"] == read_model_version(None)
    assert summary["decision"] == keyword_model.decision.as_metadata()
    assert summary["input"] == str(recordings)
    assert summary["runner"].startswith("DirectRunner")
    assert summary["started_at"] <= summary["ended_at"]
    assert summary["files_per_s"] > 0
