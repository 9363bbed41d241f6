"""The set-up installs what the tests need: headless Chromium (tools/ensure_browser.sh, run by `make setup`).

No real apt-get here: the script runs with a PATH of stubs only, so no browser of this machine is found; the
stub `apt-get` writes down its arguments and "installs" a stub chromium, the stub `id` says who we are.
"""
import subprocess
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
