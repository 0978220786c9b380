"""Nothing stops a run and nothing is lost: odd file names, inputs that look like globs, runs
in which most files fail, folders that cannot be listed, rows that do not match the files."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import transforms
from pipeline.cli import EXIT_BAD_INPUT, EXIT_TOO_MANY_ERRORS, main
from pipeline.labels import display_path
from pipeline.sources import ListingError, list_input
from tests.helpers import first_test_clip, write_wav

ODD_NAMES = [
    "new\nline.wav",
    "comma,name.wav",
    'quote".wav',
    "apostrophe's.wav",
    "[bracket].wav",
    "star*.wav",
    "question?.wav",
    "space and tab\t.wav",
    "ünïcode-名前.wav",
]
NOT_UTF8_NAME = b"caf\xe9.wav"  # Latin-1, as an old Windows tool writes it


@pytest.fixture
def odd_folder(tmp_path, data_dir) -> Path:
    """`recordings [2024]`: a folder whose own name is a glob pattern, holding odd names."""
    folder = tmp_path / "recordings [2024]"
    yes = first_test_clip(data_dir, "yes")
    for name in ODD_NAMES:
        write_wav(folder / name, yes, 16_000)
    with open(os.path.join(os.fsencode(folder), NOT_UTF8_NAME), "wb") as file:
        file.write((folder / ODD_NAMES[0]).read_bytes())
    return folder


def test_an_existing_path_is_a_path_even_if_it_looks_like_a_glob(odd_folder):
    listed = list(list_input(str(odd_folder)))
    assert len(listed) == len(ODD_NAMES) + 1
    assert list(list_input(str(odd_folder / "[bracket].wav"))) == [
        str(odd_folder / "[bracket].wav")
    ]


def test_every_odd_name_gets_its_row_and_a_non_utf8_name_shows_its_bytes(odd_folder, tmp_path):
    assert main(["--input", str(odd_folder), "--output", str(tmp_path / "out")]) == 0
    rows = pq.read_table(tmp_path / "out").to_pylist()
    expected = {str(odd_folder / name) for name in ODD_NAMES} | {str(odd_folder / "caf\\xe9.wav")}
    assert {row["path"] for row in rows} == expected
    assert all(row["error"] is None and row["label"] == "yes" for row in rows)
    # The escaped name leads back to the file.
    on_disk = os.fsencode(str(odd_folder)) + b"/" + NOT_UTF8_NAME
    assert display_path(os.fsdecode(on_disk)) == str(odd_folder / "caf\\xe9.wav")


def test_skip_existing_recognises_a_non_utf8_name_it_wrote(odd_folder, tmp_path):
    output = str(tmp_path / "out")
    assert main(["--input", str(odd_folder), "--output", output]) == 0
    assert main(["--input", str(odd_folder), "--output", output, "--skip_existing"]) == 0
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["files_labelled_this_run"] == 0
    assert summary["files"] == len(ODD_NAMES) + 1


def test_a_run_where_most_files_fail_commits_nothing(recordings, data_dir, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["--input", str(recordings), "--output", str(output)]) == 0
    before = sorted(p.name for p in output.iterdir())
    junk = tmp_path / "junk"
    for index in range(6):
        (junk / f"not_audio_{index}.wav").parent.mkdir(exist_ok=True)
        (junk / f"not_audio_{index}.wav").write_text("not audio")
    write_wav(junk / "fine.wav", first_test_clip(data_dir, "yes"), 16_000)
    assert main(["--input", str(junk), "--output", str(output)]) == EXIT_TOO_MANY_ERRORS
    message = capsys.readouterr().err
    assert "6 of 7 files failed (unreadable_audio 6)" in message
    assert sorted(p.name for p in output.iterdir()) == before  # the previous output is kept
    assert not list(tmp_path.glob("out.staging-*"))
    # A higher ceiling lets the same run through.
    assert main(["--input", str(junk), "--output", str(output), "--max_error_rate", "0.9"]) == 0


def test_a_folder_that_cannot_be_listed_stops_the_run(recordings, tmp_path, monkeypatch, capsys):
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("deeper"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ListingError, match=r"cannot list .*deeper: Permission denied"):
        list(list_input(str(recordings)))
    assert main(["--input", str(recordings), "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "cannot list" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_glob_keeps_entries_it_cannot_stat(tmp_path):
    (tmp_path / "broken.wav").symlink_to(tmp_path / "missing.wav")
    write_wav(tmp_path / "real.wav", np.zeros(16_000, np.float32), 16_000)
    assert sorted(list_input(str(tmp_path / "*.wav"))) == [
        str(tmp_path / "broken.wav"),
        str(tmp_path / "real.wav"),
    ]


def test_a_group_whose_rows_do_not_match_its_paths_fails_the_run(recordings, tmp_path, monkeypatch):
    real_process = transforms.LabelGroup.process

    def lose_a_row(self, group):
        for labelled, rows, events in real_process(self, group):
            yield labelled, rows[:-1], events

    monkeypatch.setattr(transforms.LabelGroup, "process", lose_a_row)
    with pytest.raises(Exception, match=r"group 00000-0000: \d+ rows for \d+ paths"):
        main(["--input", str(recordings), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.staging-*"))


def test_the_launcher_refuses_a_run_that_lost_a_group(recordings, tmp_path, monkeypatch):
    """As if a runner dropped one group's output: the tally is short of a slice."""
    real_process = transforms.LabelGroup.process

    def drop_the_first_group(self, group):
        if group.name != "00000-0000":
            yield from real_process(self, group)

    monkeypatch.setattr(transforms.LabelGroup, "process", drop_the_first_group)
    with pytest.raises(RuntimeError, match=r"the runner lost part of the run \(\d+ of \d+ input"):
        main(["--input", str(recordings), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_skip_existing_keeps_only_error_free_rows_of_this_model(recordings, tmp_path, monkeypatch):
    output = tmp_path / "out"
    monkeypatch.chdir(recordings.parent)
    relative = os.path.relpath(recordings)
    assert main(["--input", relative, "--output", str(output)]) == 0
    first = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    assert all(os.path.isabs(path) for path in first)
    errors = sum(row["error"] is not None for row in first.values())

    # The same folder by its absolute path: every file is the same file, and only the error
    # rows are tried again.
    assert main(["--input", str(recordings), "--output", str(output), "--skip_existing"]) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["files"] == len(first)
    assert summary["files_labelled_this_run"] == errors > 0

    # --keep_error_rows keeps them as they are.
    argv = ["--input", str(recordings), "--output", str(output), "--skip_existing"]
    assert main([*argv, "--keep_error_rows"]) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert (summary["files"], summary["files_labelled_this_run"]) == (len(first), 0)

    # Rows scored by another model are all labelled again.
    for path in output.glob("labels-*.parquet"):
        table = pq.read_table(path)
        older = pa.array(["sha256:older"] * table.num_rows, pa.string())
        column = table.schema.get_field_index("model_version")
        pq.write_table(table.set_column(column, table.schema.field(column), older), path)
    assert main([*argv, "--keep_error_rows"]) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert (summary["files"], summary["files_labelled_this_run"]) == (len(first), len(first))
    rows = pq.read_table(output).to_pylist()
    assert {row["model_version"] for row in rows} == {summary["model_version"]}
