"""Progress while a run goes: counted from what each group records, on every runner."""

import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import progress
from pipeline.cli import main
from tests.helpers import write_wav

FILES = 600

# Runs the CLI with progress recorded and reported every 0.05 s, stderr wherever it is.
FAST_PROGRESS = """
import sys
from pipeline import progress
from pipeline.cli import main
progress.RECORD_INTERVAL_S["local"] = 0.0
progress.REPORT_INTERVAL_S.update(terminal=0.05, log=0.05)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for index in range(FILES):
        write_wav(folder / f"{index:04d}.wav", rng.uniform(-0.01, 0.01, 8_000), 16_000)
    (folder / "broken.wav").write_bytes(b"RIFF")
    return folder


def test_progress_lines_read_well():
    line = progress.format_progress(1_500, 20_000, 3, elapsed_s=2.0)
    assert line == "1,500 of 20,000 files (8%), 750.0 files/s, 3 errors, about 25 s left"
    assert progress.format_duration(3_725) == "1 h 02 min"
    assert progress.format_duration(125) == "2 min 05 s"
    assert "starting" in progress.format_progress(0, 10, 0, elapsed_s=1.0)
    # A text manifest's total is estimated from its size, and may be passed.
    estimated = progress.format_progress(120, 100, 0, elapsed_s=1.0, exact=False)
    assert estimated.startswith("120 of about 100 files (100%)") and "about 0 s left" in estimated


def run_cli(argv: list[str], terminal: bool) -> tuple[int, str]:
    """Exit code and stderr of the CLI in a subprocess; stderr a pseudo-terminal or a pipe."""
    command = [sys.executable, "-c", FAST_PROGRESS, *argv]
    if not terminal:
        result = subprocess.run(command, capture_output=True, text=True)
        return result.returncode, result.stderr
    controller, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(), b"".join(chunks).decode()


@pytest.mark.parametrize(
    "runner", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]]
)
def test_a_log_line_counts_the_files_of_every_worker(many_files, tmp_path, runner):
    code, stderr = run_cli(
        ["--input", str(many_files), "--output", str(tmp_path / "out"), *runner], terminal=False
    )
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("yesno-label: ")]
    done = [int(line.split()[1].replace(",", "")) for line in lines]
    assert lines and all(f"of {FILES + 1:,} files" in line for line in lines)
    assert done == sorted(done) and max(done) > 0  # counted from the workers, while they ran
    assert "WARN" not in stderr


def test_a_terminal_gets_one_line_redrawn(many_files, tmp_path):
    code, stderr = run_cli(
        ["--input", str(many_files), "--output", str(tmp_path / "out")], terminal=True
    )
    assert code == 0, stderr
    assert stderr.count("\r\x1b[K") >= 2 and "files/s" in stderr and " left" in stderr
    assert "\n" not in stderr.split("\r\x1b[K")[1]  # redrawn in place, not one line each


def test_quiet_reports_nothing(many_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(progress.REPORT_INTERVAL_S, "log", 0.01)
    assert main(["--input", str(many_files), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert "files/s" not in capsys.readouterr().err


def test_no_warning_that_a_user_cannot_act_on(tmp_path):
    """Without the GCP extra (apitools missing), Beam warns at every start; the tool drops it."""
    block_apitools = "import sys; sys.modules['apitools'] = None; "
    command = [
        sys.executable, "-c",
        block_apitools + "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
        "--input", str(Path(__file__).parents[1] / "examples" / "recordings"),
        "--output", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
