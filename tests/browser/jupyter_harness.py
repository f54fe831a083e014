"""A throw-away JupyterLab server for browser tests, and code execution in its kernels.

`JupyterLab(root)` starts ``python -m jupyterlab`` on 127.0.0.1 with no token on a free port, with
config/runtime/IPython dirs under `root` (so no user setting leaks in), and stops it by its process
group id (the server and the kernels it started) in `stop()`. `execute(kernel_id, code)` runs code in a
notebook's kernel through the kernel websocket API and returns what it printed: the test reads the
session's state from the kernel side while the browser drives the widget.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def missing_requirements() -> str | None:
    """Everything the browser test lacks here (all of it, in one sentence), or None when it can run."""
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(f"chromium (no {CHROMIUM}: apt-get install -y chromium)")
    for module, pip_name in (("playwright", "playwright"), ("jupyterlab", "jupyterlab"), ("notebook", "notebook"),
                             ("websocket", "websocket-client"), ("ipykernel", "ipykernel")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the python package {pip_name!r}")
    if not missing:
        return None
    return "missing " + ", ".join(missing) + " (bash .ci/install_browser.sh installs them all)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


class JupyterLab:
    def __init__(self, root: Path, pythonpath: str = ""):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root.parent / f"jupyterlab-{self.port}.log"
        self.pythonpath = pythonpath

    # --- server
    def start(self, timeout: float = 60.0) -> "JupyterLab":
        state = self.root.parent / f"jupyter-state-{self.port}"
        env = dict(os.environ)
        env.update(JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
                   IPYTHONDIR=str(state / "ipython"), JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="agg",
                   PYTHONPATH=os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH", "")) if p))
        # nothing that reaches out: no news feed, no update check, no PyPI extension manager
        quiet = {"LabApp": {"news_url": None, "extension_manager": "readonly",
                            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}}
        (state / "config").mkdir(parents=True, exist_ok=True)
        for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
            (state / "config" / name).write_text(json.dumps(quiet))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.token=",
               "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={self.root}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")   # CI containers run as root
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterlab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/api/status")
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"jupyterlab did not answer on {self.url} in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and its kernels: SIGTERM to the process group we started, SIGKILL if needed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid          # start_new_session=True: the server leads its own group
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        try:                          # kernels share the group; make sure none is left
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- REST and kernels
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def kernel_id(self, notebook_path: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.get("/api/sessions"):
                if s.get("path") == notebook_path and s.get("kernel"):
                    return s["kernel"]["id"]
            time.sleep(0.5)
        raise TimeoutError(f"no kernel session for {notebook_path}")

    def wait_idle(self, kernel_id: str, timeout: float = 120.0) -> None:
        """Wait until the kernel has started and reports idle (REST), so a cell run from the page is taken."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.get(f"/api/kernels/{kernel_id}").get("execution_state")
            if state == "idle":
                return
            time.sleep(0.5)
        raise TimeoutError(f"kernel {kernel_id} not idle after {timeout} s (state {state!r}):\n{self.log_tail()}")

    def execute(self, kernel_id: str, code: str, timeout: float = 60.0) -> str:
        """Run `code` in the kernel (its own websocket connection) and return its stdout; raise on error."""
        import websocket

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels",
                                         timeout=timeout)
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            out, error, replied, idle = [], None, False, False
            deadline = time.monotonic() + timeout
            while not (replied and idle):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kernel did not finish {code[:60]!r} in {timeout} s")
                opcode, data = ws.recv_data()
                if opcode != websocket.ABNF.OPCODE_TEXT:
                    continue          # binary frames carry messages with buffers (canvas draws): not ours
                msg = json.loads(data)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream" and msg["content"]["name"] == "stdout":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    error = "\n".join(msg["content"]["traceback"])
                elif kind == "execute_reply":
                    replied = True
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            if error:
                raise RuntimeError(f"kernel error in {code[:60]!r}:\n{error}")
            return "".join(out)
        finally:
            ws.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
