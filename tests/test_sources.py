"""The input as slices: listings streamed to disk, manifests read a slice at a time, and the
same rows whichever way a folder is named."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import sources
from pipeline.cli import EXIT_BAD_INPUT, main
from tests.helpers import assert_same_rows, read_output, wav_files


def test_byte_ranges_give_every_line_to_exactly_one_slice(tmp_path):
    rng = np.random.default_rng(0)
    lines = [b"x" * int(n) + b"\n" for n in rng.integers(0, 40, 500)]
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(lines) + b"last line without a newline")
    size = path.stat().st_size
    for range_bytes in (1, 2, 3, 17, 100, 4_096, size):
        read = [
            line
            for start in range(0, size, range_bytes)
            for _, line in sources.lines_in_range(str(path), start, start + range_bytes)
        ]
        assert read == [*lines, b"last line without a newline"], range_bytes


def read_plan(plan: sources.InputPlan) -> list[str]:
    return [path for source in plan.sources for path in sources.read_source(source)]


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of a few bytes, so that a small manifest spans many."""
    monkeypatch.setattr(sources, "MIN_RANGE_BYTES", 1)


def test_a_text_manifest_resolves_relative_paths_and_skips_blank_lines(tmp_path, small_slices):
    manifest = tmp_path / "lists" / "manifest.txt"
    manifest.parent.mkdir()
    names = [f"clip {i:02d}.wav" for i in range(20)]
    text = "\ufeff" + "\r\n".join(names[:10]) + "\n\n  \n"
    text += "\n".join(f"../{name}" for name in names[10:])
    manifest.write_text(text + "\ns3://bucket/key.wav\n/abs/x.WAV\n", encoding="utf-8")
    plan = sources.plan_manifest(str(manifest), group_size=3)
    assert len(plan.sources) > 5 and not plan.exact
    expected = [str(manifest.parent / n) for n in names[:10]]
    expected += [str(tmp_path / n) for n in names[10:]] + ["s3://bucket/key.wav", "/abs/x.WAV"]
    assert read_plan(plan) == expected


def test_a_csv_manifest_reads_its_path_column(tmp_path, small_slices):
    manifest = tmp_path / "manifest.csv"
    rows = ["id,path,note", "1,/data/a.wav,x", '2,"/data/b, with a comma.wav",y', "3,/data/c.wav,"]
    manifest.write_text("\n".join(rows) + "\n")
    plan = sources.plan_manifest(str(manifest), group_size=3)
    assert read_plan(plan) == ["/data/a.wav", "/data/b, with a comma.wav", "/data/c.wav"]
    (tmp_path / "bad.csv").write_text("file,name\n/data/a.wav,a\n")
    with pytest.raises(sources.ManifestError, match="no `path` column"):
        sources.plan_manifest(str(tmp_path / "bad.csv"))


def test_a_parquet_manifest_is_read_a_row_group_at_a_time(tmp_path):
    paths = [f"/data/{i:04d}.wav" for i in range(1_000)]
    table = pa.table({"size": list(range(1_000)), "path": paths})
    pq.write_table(table, tmp_path / "manifest.parquet", row_group_size=300)
    plan = sources.plan_manifest(str(tmp_path / "manifest.parquet"))
    assert (len(plan.sources), plan.files, plan.exact) == (4, 1_000, True)
    assert read_plan(plan) == paths


def test_a_listing_is_written_as_it_is_found(tmp_path, monkeypatch):
    """Memory stays bounded: groups reach the listing file while the walk is still going, and
    listing files are rotated."""
    monkeypatch.setattr(sources, "SMALL_INPUT", 8)
    monkeypatch.setattr(sources, "GROUPS_PER_LISTING_FILE", 3)
    listing_dir = tmp_path / "_inputs"
    written_while_listing = []

    def paths():
        for i in range(50):
            if i == 30:
                first = listing_dir / "listing-00000.jsonl"
                written_while_listing.append(first.exists() and first.stat().st_size > 0)
            yield f"/data/{49 - i:02d}\udcff.wav"  # not sorted, and not UTF-8

    plan = sources.write_listing(paths(), str(listing_dir), group_size=4)
    assert written_while_listing == [True]
    assert (plan.files, len(plan.sources)) == (50, 13)
    assert sorted(os.listdir(listing_dir)) == [f"listing-{n:05d}.jsonl" for n in range(5)]
    assert read_plan(plan) == [f"/data/{49 - i:02d}\udcff.wav" for i in range(50)]
    assert json.loads((listing_dir / "listing-00000.jsonl").read_text().splitlines()[0])


def test_a_small_listing_is_sorted_and_split_for_a_few_workers(tmp_path):
    paths = [f"/data/{i:04d}.wav" for i in reversed(range(1_200))]
    plan = sources.write_listing(paths, str(tmp_path))
    groups = [list(sources.read_source(source)) for source in plan.sources]
    assert [len(group) for group in groups] == [256, 256, 256, 256, 176]
    assert [path for group in groups for path in group] == sorted(paths)


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_a_manifest_gives_the_rows_of_its_folder(recordings, tmp_path, kind):
    folder_output = tmp_path / "from_folder"
    assert main(["--input", str(recordings), "--output", str(folder_output)]) == 0
    paths = wav_files(recordings)
    manifest = tmp_path / f"manifest.{kind}"
    relative = [os.path.relpath(path, tmp_path) for path in paths]  # relative to the manifest
    if kind == "txt":
        manifest.write_text("\n".join(relative) + "\n")
    elif kind == "csv":
        manifest.write_text("path\n" + "\n".join(f'"{path}"' for path in relative) + "\n")
    else:
        pq.write_table(pa.table({"path": relative}), manifest)
    output = tmp_path / "from_manifest"
    assert main(["--input", str(manifest), "--output", str(output)]) == 0
    assert_same_rows(read_output(output), read_output(folder_output))
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["files"] == len(paths)


def test_a_manifest_without_files_or_a_path_column_is_bad_input(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["--input", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "a")]) == 2
    (tmp_path / "bad.parquet").write_bytes(b"")
    pq.write_table(pa.table({"file": ["/x.wav"]}), tmp_path / "bad.parquet")
    argv = ["--input", str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "b")]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "lists no file" in err and "no `path` column" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob("*.staging-*"))


def test_files_per_group_spreads_a_few_long_files_over_more_groups(recordings, tmp_path):
    """Each group is one worker's unit of work and one Parquet file."""
    reference = tmp_path / "default"
    assert main(["--input", str(recordings), "--output", str(reference)]) == 0
    assert len(json.loads((reference / "_summary.json").read_text())["parquet_files"]) == 1
    output = tmp_path / "small_groups"
    argv = ["--input", str(recordings), "--output", str(output), "--files_per_group", "3"]
    assert main(argv) == 0
    summary = json.loads((output / "_summary.json").read_text())
    assert len(summary["parquet_files"]) == -(-len(wav_files(recordings)) // 3)
    assert_same_rows(read_output(output), read_output(reference))
    with pytest.raises(SystemExit, match="2"):
        main([*argv[:-1], "0"])
