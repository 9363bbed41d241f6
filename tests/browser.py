"""Headless Chromium for the tests that look at a page as a reader does (test_book.py, test_lab.py).

tools/ensure_browser.sh finds it (`make setup` installs it when it can); when there is none, the test fails with
that script's one line naming the command to run: a missing browser is a set-up error, not a reason to skip.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENSURE_BROWSER = ROOT / "tools" / "ensure_browser.sh"
BASH = shutil.which("bash") or "/bin/bash"
# No sandbox (root in containers), no GPU, and nothing that reaches the network on its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(env=None):
    """Return the path of headless Chromium, or fail the calling test with set-up's one-line message."""
    found = subprocess.run([BASH, str(ENSURE_BROWSER), "--find"], capture_output=True, text=True, env=env)
    if found.returncode != 0:
        pytest.fail(found.stderr.strip(), pytrace=False)
    return found.stdout.strip()
