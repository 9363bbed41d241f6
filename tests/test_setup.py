"""The set-up installs what the tests need: headless Chromium (tools/ensure_browser.sh, run by `make setup`); it
warns when the disk is too full (tools/check_disk.sh); the suite deletes a passing test's temporary folder.

No real apt-get here: the script runs with a PATH of stubs only, so no browser of this machine is found; the
stub `apt-get` writes down its arguments and "installs" a stub chromium, the stub `id` says who we are.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from browser import chromium

ROOT = Path(__file__).resolve().parents[1]
BASH = "/bin/bash"
INSTALL = "apt-get install -y chromium"  # what the message tells a user to run (sudo first when not root)


def stub(path, body):
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A PATH of stubs: `id -u` prints $FAKE_UID; `apt-get` logs its arguments and, on install, adds chromium."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "apt-get.log"
    stub(bin_ / "id", '[ "$1" = -u ] && echo "$FAKE_UID"')
    stub(bin_ / "apt-get", f'echo "$*" >> {log}\n'
                           f'if [ "$1" = install ] && [ -z "$APT_BROKEN" ]; then\n'
                           f'  printf "#!{BASH}\\n" > {bin_}/chromium; /bin/chmod +x {bin_}/chromium\nfi')

    def run(*args, uid=0, broken=False):
        env = {"PATH": str(bin_), "FAKE_UID": str(uid), "APT_BROKEN": "1" if broken else ""}
        done = subprocess.run([BASH, "tools/ensure_browser.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return done, calls

    run.bin = bin_
    run.env = lambda uid: {"PATH": str(bin_), "FAKE_UID": str(uid)}
    return run


def test_no_browser_on_the_stub_path(machine):
    done, calls = machine("--find")
    assert done.returncode == 1 and calls == []


def test_found_browser_is_kept(machine):
    stub(machine.bin / "chromium-browser", "")
    done, calls = machine()
    assert done.returncode == 0 and calls == [], done.stderr
    done, _ = machine("--find")
    assert done.stdout.strip() == str(machine.bin / "chromium-browser")


def test_root_installs_debian_chromium(machine):
    done, calls = machine(uid=0)
    assert done.returncode == 0, done.stderr
    # The package lists first (a fresh machine has none), then Debian's package, without questions.
    assert calls[0].split()[0] == "update"
    assert calls[1].split()[0] == "install" and "-y" in calls[1].split() and calls[1].split()[-1] == "chromium"
    done, _ = machine("--find")
    assert done.stdout.strip() == str(machine.bin / "chromium")


@pytest.mark.parametrize("uid, broken", [(1000, False), (0, True)], ids=["not-root", "install-failed"])
def test_no_browser_stops_with_one_line(machine, uid, broken):
    done, calls = machine(uid=uid, broken=broken)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert INSTALL in lines[-1] and "Traceback" not in done.stderr
    if uid:
        assert lines == [lines[-1]] and f"sudo {INSTALL}" in lines[0]
        assert calls == [], "not root: apt-get is not tried"
    # The tests' look-up, which never installs, ends on the same line.
    found, calls_after = machine("--find", uid=uid)
    assert found.returncode == 1 and found.stderr.strip() == lines[-1] and calls_after == calls


def test_make_setup_goes_on_without_a_browser(machine):
    # `make setup` with .venv taken as installed (-o): only the browser step runs; not root, it says the line and
    # goes on, so that `make test` runs and the browser tests fail with that line.
    (machine.bin / "make").symlink_to("/usr/bin/make")
    done = subprocess.run(["/usr/bin/make", "-s", "-o", ".venv/.installed", "setup"], cwd=ROOT,
                          env=machine.env(1000), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"sudo {INSTALL}" in done.stderr and "Error" not in done.stderr, done.stderr


def test_browser_tests_fail_not_skip(machine):
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium(env=machine.env(1000))


# --- the disk: tools/check_disk.sh warns in one line, never stops the set-up ---

def check_disk(tmp_path, df_body):
    """Run tools/check_disk.sh on tmp_path, needing 7000 MB for "the set-up", with a stub `df` running df_body."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stub(bin_ / "df", df_body)
    return subprocess.run([BASH, "tools/check_disk.sh", str(tmp_path), "7000", "the set-up"], cwd=ROOT,
                          env={"PATH": f"{bin_}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("free_mb, warned", [(1000, True), (6999, True), (7000, False), (50000, False)])
def test_check_disk_warns_in_one_line_below_the_need(tmp_path, free_mb, warned):
    # POSIX `df -Pk` output with `free_mb` MB available, whatever folder is asked.
    done = check_disk(tmp_path, f'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
                                f'echo "/dev/x 99999999 1 {free_mb * 1024} 1% /"')
    assert done.returncode == 0 and done.stdout == ""
    if warned:
        assert done.stderr.count("\n") == 1, done.stderr
        assert f"only {free_mb} MB free" in done.stderr and str(tmp_path) in done.stderr
        assert "the set-up needs about 7000 MB" in done.stderr
    else:
        assert done.stderr == ""


def test_check_disk_goes_on_when_df_fails(tmp_path):
    done = check_disk(tmp_path, "exit 1")
    assert done.returncode == 0 and done.stderr.count("\n") == 1 and "could not read" in done.stderr


def test_a_passing_tests_temporary_folder_is_deleted_when_it_ends(tmp_path):
    # An inner pytest session under this project's configuration: each test writes 1 MB into its tmp_path and
    # records where; the passing test's folder must be gone when it ends, the failing test's kept for a look.
    (tmp_path / "test_inner.py").write_text(
        "import os\n"
        "def write(tmp_path, name):\n"
        "    (tmp_path / 'blob').write_bytes(os.urandom(1 << 20))\n"
        f"    open({str(tmp_path / 'where')!r} + name, 'w').write(str(tmp_path))\n"
        "def test_passes(tmp_path):\n"
        "    write(tmp_path, 'passes')\n"
        "def test_fails(tmp_path):\n"
        "    write(tmp_path, 'fails')\n"
        "    assert False\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "--basetemp",
                           str(tmp_path / "base"), str(tmp_path / "test_inner.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    passed = Path((tmp_path / "wherepasses").read_text())
    failed = Path((tmp_path / "wherefails").read_text())
    assert not passed.exists()
    assert (failed / "blob").stat().st_size == 1 << 20
