"""The server process ends when the process that started it dies (no orphans).

``start_provider`` passes its own process id. The server then watches it in two ways:

* Linux's ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to send a signal the moment the
  parent dies, even when it is killed with SIGKILL (a notebook kernel restart does that).
  The kernel sends it when the *thread* that started the server ends, too, so the
  signal only triggers a check: is the parent process really gone?
* a watchdog thread polls ``os.getppid()`` twice a second, on every platform, as a
  fallback (an orphan is re-parented, so its parent id changes).

Either way the server shuts down gracefully (as on SIGTERM), and exits hard if that takes
longer than a few seconds. First it removes the folder it was given (``--cleanup-dir``:
``start_provider``'s temporary folder, with the keys and the admin key), which the dead
parent can no longer remove.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5
HARD_EXIT_AFTER_SECONDS = 5.0
_started = threading.Event()
_cleanup: list[Path] = []  #: folders to remove once the parent has died


def parent_alive(parent_pid: int) -> bool:
    """True while ``parent_pid`` is still this process's parent."""
    return os.getppid() == parent_pid


def remove_folders() -> None:
    """Remove the folders registered with :func:`watch_parent` (the parent has died)."""
    for folder in _cleanup:
        shutil.rmtree(folder, ignore_errors=True)


def _shutdown(reason: str) -> None:
    """Ask for a graceful shutdown (SIGTERM to ourselves), and force an exit soon after."""
    if _started.is_set():
        return
    _started.set()
    print(f"Stopping: {reason}.", file=sys.stderr, flush=True)
    remove_folders()  # now: uvicorn re-raises SIGTERM once it has stopped, so nothing after it runs (files still open stay usable)

    def hard_exit() -> None:
        time.sleep(HARD_EXIT_AFTER_SECONDS)
        remove_folders()
        os._exit(0)

    threading.Thread(target=hard_exit, name="glassbox-hard-exit", daemon=True).start()
    os.kill(os.getpid(), signal.SIGTERM)


def _arm_pdeathsig(parent_pid: int) -> None:
    """Linux only: have the kernel send SIGUSR1 when the parent dies; the handler checks and shuts down."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no libc or no prctl: the watchdog still works
        return

    def on_signal(signum: int, frame: object) -> None:
        if not parent_alive(parent_pid):
            _shutdown(f"the process that started this server ({parent_pid}) has ended")

    signal.signal(signal.SIGUSR1, on_signal)


def watch_parent(parent_pid: int, cleanup: str | os.PathLike | None = None) -> None:
    """Exit (gracefully, then hard) as soon as ``parent_pid`` is no longer our parent, removing ``cleanup`` (a folder).

    Call it early in the server's main thread, before loading the model.
    """
    if cleanup is not None:
        _cleanup.append(Path(cleanup))
    _arm_pdeathsig(parent_pid)
    if not parent_alive(parent_pid):  # it died before we armed the signal
        print(f"Stopping: the process that started this server ({parent_pid}) has already ended.", file=sys.stderr)
        remove_folders()
        os._exit(0)

    def watchdog() -> None:
        while parent_alive(parent_pid):
            time.sleep(POLL_SECONDS)
        _shutdown(f"the process that started this server ({parent_pid}) has ended")

    threading.Thread(target=watchdog, name="glassbox-parent-watchdog", daemon=True).start()
