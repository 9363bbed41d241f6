"""What the operating system refuses, said in one line: a full disk (a real small tmpfs), a read-only file system (a
real read-only mount), a file where a folder belongs, a folder where a file belongs. Nothing half-written is left.

The mounts need root (CI and our machines run as root); elsewhere those tests are skipped with the reason.
"""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memvir.files import atomic_write, os_error_line

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data_name", "glyphs", "--num_classes", "20", "--instances_per_class", "10", "--input_size", "16",
        "--batch_size", "32", "--dim", "16", "--epochs", "2", "--no_progress"]


def mounted(folder, options):
    """Mount a tmpfs at `folder` with `options`; skip the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:80]}): needs root")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    disk = mounted(tmp_path / "disk", "size=300k")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path):
    disk = mounted(tmp_path / "ro", "size=1m,ro")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def memvir_cli(*argv, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "memvir", *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def error_line(done):
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_training_on_a_full_disk_says_so_and_leaves_nothing_half_written(small_disk):
    done = memvir_cli("train", *TINY, "--save_path", str(small_disk / "run"))
    assert done.returncode == 2
    line = error_line(done)
    assert line.startswith(f"error: {small_disk / 'run' / 'checkpoints'}/epoch_00001.pt: no space left on its "
                           f"device ("), line
    assert "free some, or write elsewhere" in line
    assert not [p for p in (small_disk / "run").rglob("*") if ".tmp" in p.name]  # no temporary file left


def test_a_report_on_a_full_disk_says_so(small_disk, tmp_path):
    import runfolders

    (tmp_path / "repo").mkdir()
    profile = runfolders.finished_profile(tmp_path / "repo")  # four finished hand-made runs
    done = memvir_cli("report", "--profile", str(profile.path), "--out", str(small_disk / "report"))
    assert done.returncode == 1
    line = error_line(done)
    assert line.startswith(f"error: {small_disk / 'report'}") and "no space left on its device" in line, line
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]


def test_a_read_only_run_folder_is_one_line(read_only):
    done = memvir_cli("train", *TINY, "--save_path", str(read_only / "run"))
    assert done.returncode == 2
    assert error_line(done) == f"error: {read_only / 'run'}: read-only file system: write elsewhere"


def test_a_file_where_the_run_folder_belongs(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    done = memvir_cli("train", *TINY, "--save_path", str(tmp_path / "notes.txt"))
    assert done.returncode == 2
    assert error_line(done) == (f"error: {tmp_path / 'notes.txt'}: exists and is not a folder; expected a folder (or "
                                f"nothing there)")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_where_checkpoints_is_a_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    done = memvir_cli("train", *TINY, "--save_path", str(run))
    assert done.returncode == 2
    assert error_line(done).startswith(f"error: {run / 'checkpoints'}"), done.stderr[-2000:]


@pytest.mark.parametrize("code,words", [(errno.EACCES, "permission denied"), (errno.EISDIR, "is a folder; expected a "
                                        "file"), (errno.ENOTDIR, "a file stands where a folder is expected on this path"),
                                        (errno.EIO, "Input/output error")])
def test_os_error_line_says_what_to_do(tmp_path, code, words):
    assert os_error_line(OSError(code, os.strerror(code), str(tmp_path / "x"))) == f"{tmp_path / 'x'}: {words}"


def test_a_short_write_on_a_full_disk_is_reported_as_one(small_disk):
    # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos"); atomic_write looks at the disk.
    def fill(fh):
        fh.write(b"x" * (400 * 1024))

    with pytest.raises(OSError) as err:
        atomic_write(small_disk / "big.bin", fill)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(small_disk / "big.bin")
    assert list(small_disk.iterdir()) == []


def test_ctrl_c_inside_a_write_stays_an_interrupt(tmp_path):
    # torch.save interrupted: its zip writer's cleanup raises a RuntimeError that hides the KeyboardInterrupt.
    def interrupted_then_cleanup_fails(fh):
        fh.write(b"half")
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 608512 vs 608404")

    (tmp_path / "ckpt.pt").write_bytes(b"the previous checkpoint")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "ckpt.pt", interrupted_then_cleanup_fails)
    assert (tmp_path / "ckpt.pt").read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
