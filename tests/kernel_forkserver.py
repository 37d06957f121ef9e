"""Kernels for the test suite, forked from a process that has already imported torch and transformers.

Every notebook the suite runs (nbval, nbgrader's autograde, nbclient) starts a fresh Python
kernel, and each kernel spent about 5 of its 8 seconds importing torch, transformers and
IPython before the notebook's first line ran: some 50 kernels a run. Here one *fork server* per
pytest process imports them once; each kernel is a fresh ``fork()`` of it, so it starts with
those modules loaded and nothing else: its own process, an empty namespace, the notebook's
folder as working directory and the environment of the test that started it. The notebook's
own ``import torch`` still runs (and finds the module loaded).

Two commands:

- ``python tests/kernel_forkserver.py serve SOCKET``: the fork server. It listens on a Unix
  socket, forks one kernel per request, and kills a kernel whose launcher died (as
  jupyter_client kills a kernel it gave up on). It exits when the process that started it ends.
- ``python tests/kernel_forkserver.py launch -f CONNECTION_FILE``: the kernel command that
  jupyter_client runs (``KERNEL_ARGV``). It hands its working directory, environment and
  standard streams to the fork server, forwards interrupt and terminate signals to the kernel,
  and exits when the kernel exits. With no fork server (``FORKSERVER_VARIABLE`` unset or its
  socket gone) it becomes a normal ``python -m ipykernel_launcher``.

tests/notebook_plugin.py starts the server for a session that runs notebooks and points the
kernel specs at ``launch``. tests/test_kernel_forkserver.py checks what a kernel sees.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import sys
import time

FORKSERVER_VARIABLE = "GLASSBOX_TEST_KERNEL_FORKSERVER"
"""The fork server's socket path, for the launchers (inherited through the environment)."""
STARTING = ".starting"
LOG_VARIABLE = "GLASSBOX_TEST_KERNEL_LOG"
"""A file where each kernel start adds a line: how it started ("forked" or why not)."""
KERNEL_ARGV = [sys.executable, os.path.abspath(__file__), "launch", "-f", "{connection_file}"]
PRELOADED = ("torch", "transformers", "ipykernel.kernelapp")
READ_AT_IMPORT = ("HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "OPENBLAS_", "TOKENIZERS_",
                  "PYTHON", "IPYTHON", "MPL")
"""Environment variables those modules read when imported: a kernel whose environment differs from
the server's in any of them is started the usual way instead (exec'd, not forked)."""


def _note(how: str) -> None:
    if path := os.environ.get(LOG_VARIABLE):
        with open(path, "a", encoding="utf-8") as log:
            log.write(how + "\n")


def _start_the_usual_way(argv: list[str], why: str) -> None:
    """Become ``python -m ipykernel_launcher`` (exec: the same process id, nothing kept)."""
    _note(f"started: {why}")
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])


def _read_at_import(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(READ_AT_IMPORT)}


def _kernel(request: dict, streams: list[int], close: list[int]) -> None:
    """In the forked child: become the kernel ``python -m ipykernel_launcher`` would have been."""
    for fd in close:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; a kernel waits for its children
    os.setsid()  # its own session, like a kernel jupyter_client starts (signals to the server miss it)
    for target, fd in enumerate(streams):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    server_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(request["env"])
    if _read_at_import(request["env"]) != _read_at_import(server_env):
        _start_the_usual_way(request["argv"], "a setting read at import differs")
    _note("forked")
    del sys.path[0]  # the server's own folder; ipykernel_launcher removes `python -m`'s '' the same way
    sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, *request["argv"]]
    from ipykernel import kernelapp

    # parent_handle's default was read from JPY_PARENT_PID when the server imported ipykernel. Given
    # the launcher, ipykernel polls for a change of parent (it ends if the server goes) and prints no
    # "Ctrl-C will not work" note.
    try:
        kernelapp.launch_new_instance(argv=[*request["argv"], f"--IPKernelApp.parent_handle={request['launcher']}"])
    finally:
        os._exit(0)


def serve(path: str) -> None:
    """Fork a kernel for each launcher that connects to ``path``; until the parent process ends.

    While ``path + STARTING`` exists (its starter makes it), launchers wait for the socket instead
    of importing everything themselves; it is removed once the socket listens, or on failure."""
    try:
        for name in PRELOADED:
            importlib.import_module(name)
        parent = os.getppid()
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped by the system
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(path)
        listener.listen(64)
    finally:
        if os.path.exists(path + STARTING):
            os.unlink(path + STARTING)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    kernels: dict[int, int] = {}  # a launcher's pidfd -> its kernel's pid
    while os.getppid() == parent:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listener:
                connection, _ = listener.accept()
                with connection:
                    message, streams, _, _ = socket.recv_fds(connection, 1 << 20, 3)
                    request = json.loads(message)
                    try:
                        launcher = os.pidfd_open(request["launcher"])
                    except ProcessLookupError:
                        for fd in streams:
                            os.close(fd)
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _kernel(request, streams,
                                [selector.fileno(), listener.fileno(), connection.fileno(), launcher, *kernels])
                    for fd in streams:
                        os.close(fd)
                    kernels[launcher] = pid
                    selector.register(launcher, selectors.EVENT_READ)
                    connection.sendall(str(pid).encode())
            else:  # a launcher ended: its kernel goes too (it has usually exited already)
                selector.unregister(key.fd)
                os.close(key.fd)
                try:
                    os.kill(kernels.pop(key.fd), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for pid in kernels.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(argv: list[str]) -> None:
    """Run a kernel through the fork server, or as ``python -m ipykernel_launcher`` without one."""
    path = os.environ.get(FORKSERVER_VARIABLE, "")
    deadline = time.monotonic() + 120
    while path and not os.path.exists(path) and os.path.exists(path + STARTING) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server is importing: cheaper to wait than to import here too
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.connect(path)
    except OSError:
        _start_the_usual_way(argv, "no fork server (yet)")
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
               "launcher": os.getpid()}
    socket.send_fds(server, [json.dumps(request).encode()], [0, 1, 2])
    kernel = int(server.recv(64))
    server.close()
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, lambda received, frame: os.kill(kernel, received))
    # Until the kernel exits, or the client that started this launcher does (then the server kills
    # the kernel, as ipykernel ends a kernel whose parent has gone).
    sel = selectors.DefaultSelector()
    for pid in (kernel, os.getppid()):
        sel.register(os.pidfd_open(pid), selectors.EVENT_READ)
    sel.select()
    sys.exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["launch"]:
        launch(sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} serve SOCKET | launch -f CONNECTION_FILE")
