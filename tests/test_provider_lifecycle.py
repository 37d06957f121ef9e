"""Starting and stopping the provider: no orphan survives, whatever happens to the process that started it.

The server must stop when the ``with`` block ends by an exception, when the parent exits
without stopping it (atexit), and when the parent is killed with SIGKILL (as a notebook
kernel restart does), and a start that cannot succeed must say why. Starting it must
print nothing in the parent (nbval compares stderr).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from glassbox.paths import REPO_DIR
from glassbox.provider import ProviderStartError, start_provider

PARENT_SCRIPT = """
import sys, time
from glassbox.provider import start_provider
provider = start_provider("tinygpt")
print(provider.pid, flush=True)
if sys.argv[1] == "sleep":
    time.sleep(600)
# "exit": leave without stopping it; atexit must do that
"""


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its exit status to be collected counts as ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def is_provider(pid: int) -> bool:
    return "glassbox.provider" in " ".join(psutil.Process(pid).cmdline())


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glassbox.provider", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_DIR)


# ----- the command line (answers before loading anything heavy) --------------------------------


def test_help_documents_every_flag() -> None:
    from glassbox.provider.__main__ import build_parser

    result = run_cli("--help", timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    flags = [option for action in build_parser()._actions for option in action.option_strings if option.startswith("--")]
    assert len(flags) >= 16
    for flag in flags:
        assert flag in result.stdout, f"{flag} is not in --help"
    for limit in ("413", "context_length_exceeded", "logit_bias", "stop", "n "):
        assert limit in result.stdout


def test_other_hosts_refuse_to_start_without_a_key() -> None:
    result = run_cli("--host", "0.0.0.0", "--model", "tinygpt", timeout=30)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in result.stderr and "--api-key" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--rpm", "0"], "--rpm must be a positive whole number"),
    (["--keys-file", "/no/such/keys.txt"], "Cannot read the keys file"),
    (["--api-key", "same-key-1", "--admin-key", "same-key-1"], "is the admin key"),
    (["--model", "/no/such/folder"], "the model folder /no/such/folder does not exist"),
])
def test_bad_arguments_get_a_clear_message(args: list[str], message: str) -> None:
    result = run_cli("--port", "0", *args, timeout=30)
    assert result.returncode != 0 and message in result.stderr


def test_a_port_in_use_is_reported() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("--port", str(port), "--api-key", "k-123456", timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: it is already in use" in result.stderr


# ----- start_provider ---------------------------------------------------------------------------


def test_a_failed_start_raises_with_the_reason_and_leaves_nothing(capfd) -> None:
    with pytest.raises(ProviderStartError) as raised:
        start_provider(model="/no/such/folder")
    assert "does not exist" in str(raised.value) and "exit code 1" in str(raised.value)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_the_with_block_stops_the_server_when_a_cell_fails(capfd) -> None:
    with pytest.raises(ZeroDivisionError):
        with start_provider("tinygpt") as provider:
            pid = provider.pid
            assert alive(pid) and is_provider(pid)
            1 / 0  # noqa: B018 - the failing cell
    assert not alive(pid)
    assert not provider.running and not provider.server_log_path.parent.exists()  # temporary files removed
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing printed in the notebook's process


def test_no_orphan_after_a_normal_exit_or_a_sigkill_of_the_parent() -> None:
    code = textwrap.dedent(PARENT_SCRIPT)
    leaver = subprocess.Popen([sys.executable, "-c", code, "exit"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_DIR)
    killed = subprocess.Popen([sys.executable, "-c", code, "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_DIR)
    try:
        out, err = leaver.communicate(timeout=300)
        assert leaver.returncode == 0 and err == "", err
        left_pid = int(out.split()[0])
        assert not alive(left_pid)  # atexit stopped it before the parent ended

        line = killed.stdout.readline()
        assert line.strip().isdigit(), killed.stderr.read() if killed.poll() is not None else line
        orphan_pid = int(line)
        assert alive(orphan_pid) and is_provider(orphan_pid)
        assert psutil.Process(orphan_pid).ppid() == killed.pid
        killed.send_signal(signal.SIGKILL)  # no atexit, no clean-up: as a kernel restart does
        killed.wait(10)
        assert wait_gone(orphan_pid, 10), "the provider outlived its parent"
    finally:
        for process in (leaver, killed):
            if process.poll() is None:
                process.kill()
                process.wait()
