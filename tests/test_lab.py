"""JupyterLab as `make lab` starts it (tools/lab.sh): jupytext's contents manager serves a chapter's .py as a
notebook and saves both files, a kernel started through the server runs memvir, and headless Chromium shows the
chapter open as a notebook. One server for the module, on a free localhost port, stopped by its process id."""
import asyncio
import html
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from browser import CHROMIUM_FLAGS, chromium

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = next((ROOT / "notebooks").glob("[0-9][0-9]_memvir.py")).stem  # the MemVir chapter, whatever its number
TITLE = next(line[4:].strip() for line in (ROOT / "notebooks" / f"{CHAPTER}.py").read_text().splitlines()
             if line.startswith("# # "))  # its first Markdown heading


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Start tools/lab.sh on a copy of the chapter's pair (saving must not touch notebooks/); yield (url, token)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for suffix in (".py", ".ipynb"):
        shutil.copy(ROOT / "notebooks" / f"{CHAPTER}{suffix}", root)
    # The kernel `memvir` as `make setup` registers it, but for this interpreter and out of the user's folders (a
    # registered one may belong to another checkout); Jupyter's config, runtime and Lab settings are the test's too.
    jupyter = tmp / "jupyter"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(jupyter), "--name", "memvir",
                    "--display-name", "Python (memvir)"], check=True, capture_output=True)
    env = {**os.environ, "JUPYTER_PATH": str(jupyter / "share" / "jupyter"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "OMP_NUM_THREADS": "1"}
    log = tmp / "lab.log"
    with open(log, "w") as out:  # a file, not a pipe: the server logs every request and must never block on it
        server = subprocess.Popen(["bash", str(ROOT / "tools" / "lab.sh"), sys.executable, str(root),
                                   str(free_port())], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # `make lab` prints the URL with its token; the port may differ from the one asked for if it was taken.
        deadline = time.monotonic() + 120
        while not (found := re.search(r"(http://127\.0\.0\.1:\d+)/lab\?token=(\w+)", log.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield found.group(1), found.group(2), root
    finally:
        os.kill(server.pid, signal.SIGTERM)  # the server itself (lab.sh execs it): it shuts its kernels down
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()


def api(lab, method, path, body=None):
    url, token, _ = lab
    req = Request(f"{url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
                  headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urlopen(req, timeout=120) as resp:
        return json.loads(resp.read() or "null")


def test_server_listens_on_localhost_only(lab):
    url, token, _ = lab
    assert url.startswith("http://127.0.0.1:") and len(token) >= 32
    kernels = api(lab, "GET", "/api/kernelspecs")
    assert kernels["default"] == "memvir" and "memvir" in kernels["kernelspecs"]


def test_py_opens_as_a_notebook_and_saves_both_files(lab):
    _, _, root = lab
    model = api(lab, "GET", f"/api/contents/{CHAPTER}.py?type=notebook&content=1")
    assert model["type"] == "notebook" and model["format"] == "json"
    nb = model["content"]
    paired = json.loads((root / f"{CHAPTER}.ipynb").read_text())
    # The cells are those of the paired .ipynb, outputs included (jupytext takes them from it).
    assert [c["source"] for c in nb["cells"]] == ["".join(c["source"]) for c in paired["cells"]]
    assert sum(len(c.get("outputs", [])) for c in nb["cells"]) == sum(len(c.get("outputs", []))
                                                                      for c in paired["cells"]) > 0
    assert nb["metadata"]["kernelspec"]["name"] == "memvir"
    # Saving the notebook writes both files of the pair.
    nb["cells"][0]["source"] += "\n\nA line written through JupyterLab."
    api(lab, "PUT", f"/api/contents/{CHAPTER}.py", {"type": "notebook", "format": "json", "content": nb})
    assert "# A line written through JupyterLab." in (root / f"{CHAPTER}.py").read_text()
    saved = json.loads((root / f"{CHAPTER}.ipynb").read_text())
    assert "".join(saved["cells"][0]["source"]).endswith("A line written through JupyterLab.")


# Unit embeddings on their own class's proxy (proxies = I), so every cosine is 1 or 0. The first call finds the
# memory empty: Norm-SoftMax alone, -log(e^s / (e^s + (C-1))). The second takes the first step (N=1, M=0) as C
# virtual classes whose proxies and embeddings equal the real ones: each of the 2C rows has two logits s among
# 2C, -log(e^s / (2e^s + 2C-2)) (MemVir Sec. 3.2).
CODE = """
import torch, memvir
loss = memvir.losses.NormSoftmax(num_classes=4, embedding_size=4, scale=5.0)
with torch.no_grad():
    loss.proxies.copy_(torch.eye(4))
criterion = memvir.MemVir(loss, num_steps=1, step_gap=0, warmup_epochs=0)
labels = torch.tensor([0, 1, 2, 3])
first = criterion(torch.eye(4)[labels], labels, epoch=0).item()
second = criterion(torch.eye(4)[labels], labels, epoch=0).item()
print(memvir.__file__, first, second)
"""


async def execute(ws_url, token, code):
    """Run `code` on a kernel over the server's websocket (Jupyter messaging 5.3); return its stdout."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id, stdout, replied, idle = uuid.uuid4().hex, [], False, False
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    while not (replied and idle):
        raw = await asyncio.wait_for(ws.read_message(), timeout=180)
        assert raw is not None, "the kernel's websocket closed"
        msg = json.loads(raw)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif kind == "execute_reply":
            replied = True
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    ws.close()
    return "".join(stdout)


def test_kernel_runs_memvir(lab):
    url, token, _ = lab
    # A session for the chapter, as Lab makes when it opens it: its kernel is the one the notebook names.
    session = api(lab, "POST", "/api/sessions", {"path": f"{CHAPTER}.py", "name": f"{CHAPTER}.py",
                                                  "type": "notebook", "kernel": {"name": "memvir"}})
    assert session["kernel"]["name"] == "memvir"
    ws_url = url.replace("http://", "ws://") + f"/api/kernels/{session['kernel']['id']}/channels"
    where, first, second = asyncio.run(execute(ws_url, token, CODE)).split()
    assert Path(where).resolve() == ROOT / "memvir" / "__init__.py"  # this checkout's memvir
    s, C = 5.0, 4
    assert float(first) == pytest.approx(math.log(1 + (C - 1) * math.exp(-s)), rel=1e-5)
    assert float(second) == pytest.approx(math.log(2 + (2 * C - 2) * math.exp(-s)), rel=1e-5)


def test_lab_page_shows_the_chapter_as_a_notebook(lab, tmp_path):
    url, token, _ = lab
    # Virtual time lets the page's scripts run to the end of their work (settings, contents, kernel) before the dump.
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
           "--dump-dom", f"{url}/lab/tree/{CHAPTER}.py?token={token}"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    body = dom[dom.find("<body"):]
    assert "jp-NotebookPanel" in body and "jp-FileEditor" not in body, "opened as a notebook, not as text"
    assert re.search(rf'class="lm-TabBar-tabLabel">{re.escape(CHAPTER)}\.py<', body), "the chapter's tab"
    assert re.search(rf"<h1[^>]*>(<[^>]+></[^>]+>)?{re.escape(html.escape(TITLE, quote=False))}<", body), TITLE
    assert len(re.findall(r'class="lm-Widget jp-Cell jp-CodeCell', body)) >= 5, "its code cells"
    assert "official Jupyter news" not in body, "no question about fetching news (tools/jupyterlab-overrides.json)"
    assert re.search(r'title="Switch kernel"[^>]*>\s*<span[^>]*>Python \(memvir\)<', body), "its kernel"
