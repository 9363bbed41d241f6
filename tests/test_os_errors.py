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
    assert error_line(done) == (f"error: {run / 'checkpoints'}: exists and is not a folder; expected a folder (or "
                                f"nothing there)"), done.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints"]  # found before an epoch was trained


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


# ---- folders written as a whole (a report, the staged book) and caches: the previous one stays whole ------------


@pytest.fixture
def disk(tmp_path):
    disk = mounted(tmp_path / "disk4m", "size=4m")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def fill(folder, leave):
    """Fill the disk of `folder` until about `leave` bytes are free."""
    import shutil

    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"x" * max(free - leave, 0))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_keeps_the_previous_report_whole(disk, tmp_path, capsys):
    import runfolders
    from memvir import report

    (tmp_path / "repo").mkdir()
    profile = runfolders.finished_profile(tmp_path / "repo")
    out = disk / "report"
    assert report.main(["--profile", str(profile.path), "--out", str(out)]) == 0
    before = snapshot(out)
    metrics = profile.runs[0].folder / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.5", "0.45"))  # the next report differs
    fill(disk, 64 * 1024)
    capsys.readouterr()
    assert report.main(["--profile", str(profile.path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}/") and "no space left on its device" in err and err.count("\n") == 1, err
    assert ".tmp" not in err  # named where the file was going, not after the temporary folder
    assert snapshot(out) == before
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "report"]  # no temporary folder left


def test_a_report_on_a_read_only_file_system_is_one_line(read_only, tmp_path, capsys):
    import runfolders
    from memvir import report

    (tmp_path / "repo").mkdir()
    profile = runfolders.finished_profile(tmp_path / "repo")
    for out in (read_only / "report", read_only):
        assert report.main(["--profile", str(profile.path), "--out", str(out)]) == 1
        assert capsys.readouterr().err == (f"error: {out}: read-only file system: write elsewhere (--out: the "
                                           f"report's folder)\n")


def fake_book(root, text):
    (root / "book").mkdir(parents=True)
    for name in ("_toc.yml", "_config.yml", "intro.md"):
        (root / "book" / name).write_text(f"{name}\n")
    (root / "notebooks").mkdir()
    (root / "notebooks" / "01_a.ipynb").write_text(text)


def test_a_full_disk_keeps_the_previous_staged_book_whole(disk, tmp_path):
    from memvir import pipeline

    root = tmp_path / "repo"
    fake_book(root, "x" * 300_000)
    src = disk / "src"
    pipeline.stage_book(src, root / "notebooks", root=root, log=lambda s: None)
    before = snapshot(src)
    (root / "notebooks" / "01_a.ipynb").write_text("y" * 600_000)  # more than the old one frees: never fits
    fill(disk, 100 * 1024)
    with pytest.raises(OSError) as err:
        pipeline.stage_book(src, root / "notebooks", root=root, log=lambda s: None)
    assert err.value.errno == errno.ENOSPC
    assert os_error_line(err.value).startswith(f"{src}/chapters/01_a.ipynb: no space left on its device (")
    assert snapshot(src) == before
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "src"]


def test_staging_never_replaces_a_folder_that_is_not_a_staged_book(tmp_path):
    from memvir import pipeline

    root = tmp_path / "repo"
    fake_book(root, "{}")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a staged book"):
        pipeline.stage_book(tmp_path / "home", root / "notebooks", root=root, log=lambda s: None)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"
    with pytest.raises(FileNotFoundError, match="--from .*does not exist; expected the folder of executed chapters"):
        pipeline.stage_book(tmp_path / "src", tmp_path / "nowhere", root=root, log=lambda s: None)


def test_the_glyph_cache_on_a_full_disk_is_one_line_and_nothing_half_written(tmp_path):
    import shutil

    from memvir.data import glyphs

    pool = glyphs.default_cache_dir() / f"glyph_pool_{glyphs._load_pool()['key']}.json"  # computed once if missing
    cache = mounted(tmp_path / "cache", f"size={pool.stat().st_size // 1024 + 24}k")
    try:
        shutil.copy(pool, cache)  # the pool fits; the rendered set (~57 KB) does not
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMVIR_CACHE": str(cache)}
        done = subprocess.run([sys.executable, "-m", "memvir", "train", *TINY, "--save_path", str(tmp_path / "run")],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert done.returncode == 2
        line = error_line(done)
        assert line.startswith(f"error: {cache}/glyphs_") and ".npz: no space left on its device (" in line, line
        assert line.endswith(": free some, or write elsewhere (the glyph cache: set MEMVIR_CACHE to a writable "
                             "folder with room)")
        assert sorted(p.name for p in cache.iterdir()) == [pool.name]  # no half-written set, no temporary file
        assert not (tmp_path / "run").exists()  # the start failed: no run folder left behind
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_a_read_only_glyph_cache_is_one_line(read_only, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMVIR_CACHE": str(read_only / "cache")}
    done = subprocess.run([sys.executable, "-m", "memvir", "train", *TINY, "--save_path", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 2
    assert error_line(done) == (f"error: {read_only / 'cache'}: read-only file system: write elsewhere (the glyph "
                                f"cache: set MEMVIR_CACHE to a writable folder with room)")


def test_steps_csv_on_a_full_disk_names_the_file(small_disk):
    from memvir.rundir import StepLog

    log = StepLog(str(small_disk / "steps.csv"))
    fill(small_disk, 0)
    with pytest.raises(OSError) as err:
        for step in range(100_000):  # the buffer fills, then its write fails: Python names no file there
            log.write(step, 1, 0.5, 0.1, 0, 10, 32)
        log.flush()
    assert err.value.errno == errno.ENOSPC
    assert os_error_line(err.value).startswith(f"{small_disk / 'steps.csv'}: no space left on its device (")
    (small_disk / "filler").unlink()
    log.close()  # room again: the buffered rows go out, and the disk can be unmounted
