"""The suite's kernels (tests/kernel_forkserver.py): a forked kernel is the kernel a notebook would
have had from ``python -m ipykernel_launcher``, only started sooner.

Each test starts its own fork server and kernel spec in a temporary folder (the session's own
server, if any, is not used), and runs kernels through jupyter_client as nbval and nbgrader do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

from tests import kernel_forkserver

pytestmark = pytest.mark.notebook

REPORT = """import json, os, subprocess, sys
print(json.dumps({"pid": os.getpid(), "torch_loaded": "torch" in sys.modules, "cwd": os.getcwd(),
                  "marker": os.environ.get("GLASSBOX_TEST_MARKER"), "path": sys.path, "argv0": sys.argv[0],
                  "names": sorted(n for n in globals() if not n.startswith("_")),
                  "exit_code": subprocess.run(["false"]).returncode}))"""


@pytest.fixture
def kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fork server of our own, and "python3" pointing at the launcher; yields the server's pid."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.delenv(kernel_forkserver.LOG_VARIABLE, raising=False)  # the run's summary counts its own kernels
    socket_path = str(tmp_path / "forkserver.sock")
    monkeypatch.setenv(kernel_forkserver.FORKSERVER_VARIABLE, socket_path)
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({**ipykernel.kernelspec.get_kernel_dict(),
                                                  "argv": kernel_forkserver.KERNEL_ARGV}))
    server = subprocess.Popen([sys.executable, kernel_forkserver.__file__, "serve", socket_path])
    deadline = time.monotonic() + 120
    while not os.path.exists(socket_path):
        assert server.poll() is None and time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.1)
    yield server.pid
    server.terminate()
    server.wait(timeout=30)


def report(folder: Path) -> dict:
    """What a kernel started for a notebook in ``folder`` sees in its first cell."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(REPORT)])
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    return json.loads(notebook.cells[0].outputs[0]["text"])


def test_a_forked_kernel_sees_what_a_started_kernel_sees(kernels: int, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_TEST_MARKER", "set by the test")
    forked = report(tmp_path)
    assert forked["torch_loaded"], "the kernel was not forked from the server"
    monkeypatch.setenv(kernel_forkserver.FORKSERVER_VARIABLE, str(tmp_path / "no-server-here.sock"))
    started = report(tmp_path)
    assert not started["torch_loaded"], "without a server the kernel should start the usual way"
    assert forked["pid"] not in (kernels, os.getpid(), started["pid"])
    for key in ("cwd", "marker", "path", "argv0", "names", "exit_code"):
        assert forked[key] == started[key], (key, forked[key], started[key])
    assert forked["cwd"] == str(tmp_path) and forked["marker"] == "set by the test"
    assert forked["exit_code"] == 1  # a child's exit status reaches the kernel (the server ignores SIGCHLD)
    assert "torch" not in forked["names"]  # loaded, but the notebook's namespace is empty


def test_a_setting_read_at_import_that_differs_starts_the_kernel_the_usual_way(
        kernels: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # torch, already imported by the server, read 1
    assert not report(tmp_path)["torch_loaded"]


def test_an_interrupt_reaches_the_kernel_and_a_killed_launcher_takes_its_kernel(kernels: int) -> None:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        outputs: list[dict] = []
        client.execute_interactive("import os, sys; print(os.getpid(), 'torch' in sys.modules)",
                                   output_hook=outputs.append, timeout=60)
        pid, loaded = next(m["content"]["text"] for m in outputs if m["msg_type"] == "stream").split()
        pid = int(pid)
        assert loaded == "True", "the kernel was not forked"
        client.execute("import time; print('sleeping', flush=True); time.sleep(600)")
        while client.get_iopub_msg(timeout=60)["content"].get("text") != "sleeping\n":
            pass  # interrupt only once the cell's own code runs
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)  # the launcher, as a client gives up
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            assert time.monotonic() < deadline, f"kernel {pid} outlived its launcher"
            time.sleep(0.2)
    finally:
        client.stop_channels()
        manager.cleanup_resources()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
