"""Start the provider from Python (a notebook, a test) as a real uvicorn process, and always stop it.

::

    from glassbox.provider import start_provider

    with start_provider("tinygpt") as provider:
        client = provider.client(max_retries=0)
        reply = client.completions.create(model=provider.model_name, prompt="Once upon a time", max_tokens=5)

``start_provider`` binds a free port on 127.0.0.1 itself and hands the listening socket to
the server (so no other program can take the port in between), waits until
``GET /health`` answers, and returns a :class:`ProviderHandle`. The server stops:

* when the ``with`` block ends, normally or with an exception, or on ``handle.stop()``;
* when this Python exits (``atexit``);
* when this process dies without cleaning up, even by SIGKILL (a kernel restart): the
  server watches its parent (see ``lifeline.py``) and exits within about a second.

Nothing is printed to this process's stdout or stderr: the server's own output goes to a
log file in a temporary folder, and its last lines are put into the error if it cannot start.
This module imports only the standard library (``openai`` when ``client()`` is called).
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from glassbox.provider.requestlog import read_log_file
from glassbox.provider.settings import (
    DEFAULT_MAX_BATCH,
    DEFAULT_SERVED_NAME,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_THREADS,
    LOGIT_BIAS_MODES,
    new_key,
)

STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 12
_LIVE: set[ProviderHandle] = set()
_LIVE_LOCK = threading.Lock()


class ProviderStartError(RuntimeError):
    """The provider could not start; the message says why (and ends with its log's last lines)."""


class ProviderError(RuntimeError):
    """An operator control failed (the provider answered with an error, or is not running)."""


class ProviderHandle:
    """A running provider. Learner side: ``base_url``, ``api_key``, ``client()``. Operator side: the rest.

    Attributes: ``base_url`` ("http://127.0.0.1:PORT/v1"), ``api_key`` (the first learner key),
    ``api_keys`` (all learner keys, labelled key-1, key-2, ... in the log), ``admin_key``,
    ``model_name`` (the served name), ``log_path`` (the request log, JSON lines),
    ``server_log_path`` (the server's own output), ``pid``, ``port``.
    """

    def __init__(self, process: subprocess.Popen, port: int, api_keys: list[str], admin_key: str, served_name: str,
                 log_path: Path, server_log_path: Path, workdir: Path, keep_log: bool) -> None:
        self.process = process
        self.pid = process.pid
        self.port = port
        self.host = "127.0.0.1"
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.api_keys = list(api_keys)
        self.api_key = api_keys[0]
        self.admin_key = admin_key
        self.model_name = served_name
        self.log_path = Path(log_path)
        self.server_log_path = Path(server_log_path)
        self._workdir = workdir
        self._keep_log = keep_log
        self._stopped = False

    def __repr__(self) -> str:  # never the keys
        state = "stopped" if self._stopped else "running"
        return f"<ProviderHandle {self.model_name!r} at {self.base_url} ({state}, pid {self.pid})>"

    # ----- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> ProviderHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its temporary files. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            shutil.rmtree(self._workdir, ignore_errors=True)

    def wait_ready(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        """Wait until GET /health answers; raise :class:`ProviderStartError` if the server ends or the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ProviderStartError(self._start_failure(f"The provider stopped while starting (exit code {code})."))
            try:
                status, _ = self._http("GET", "/health", timeout=2.0, admin=False)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ProviderStartError(self._start_failure(f"The provider did not answer GET /health within {timeout:g} s."))
            time.sleep(0.05)

    def _start_failure(self, headline: str) -> str:
        lines = self._server_log_tail()
        reasons = [line[len("Error: "):] for line in lines if line.startswith("Error: ")]
        message = f"{headline} {reasons[-1]}" if reasons else headline
        tail = "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])
        return f"{message}\nThe end of its log ({self.server_log_path.name}):\n{tail}" if tail else message

    def _server_log_tail(self) -> list[str]:
        try:
            return self.server_log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    # ----- the learner's side ---------------------------------------------------------------

    def client(self, **kwargs: Any):
        """An ``openai.OpenAI`` client for this provider (first learner key unless ``api_key=`` is given)."""
        import openai

        kwargs.setdefault("api_key", self.api_key)
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    # ----- the operator's side (admin key, over HTTP) ---------------------------------------

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 600.0,
              admin: bool = True) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if admin:
                headers["Authorization"] = f"Bearer {self.admin_key}"
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw.decode("utf-8", errors="replace")
            return response.status, data
        finally:
            connection.close()

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.running:
            raise ProviderError("The provider is not running (it was stopped, or it ended).")
        status, data = self._http(method, path, body)
        if status != 200:
            message = data.get("error", {}).get("message") if isinstance(data, dict) else data
            raise ProviderError(f"{method} {path} failed with HTTP {status}: {message}")
        return data

    def swap_weights(self, variant: str) -> dict[str, Any]:
        """Swap the weights behind the served name: "int8", "fp16", "bf16", "original", or a load_model name/folder.

        Returns what is served now (operator's eyes only). Requests that are running finish
        on the old weights first; the served name does not change.
        """
        return self._admin("POST", "/admin/swap", {"variant": variant})

    def set_logit_bias_mode(self, mode: str) -> None:
        """"pre-2024": returned logprobs include logit_bias; "post-2024": they do not."""
        if mode not in LOGIT_BIAS_MODES:
            raise ValueError(f"mode must be one of {LOGIT_BIAS_MODES}, not {mode!r}")
        self._admin("POST", "/admin/logit_bias_mode", {"mode": mode})

    def revoke_key(self, label: str) -> dict[str, Any]:
        """Revoke the learner key labelled ``label`` ("key-1", ...): its next request gets 401. Others keep working."""
        from urllib.parse import quote

        return self._admin("POST", f"/admin/keys/{quote(label, safe='')}/revoke")

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        """Per-key requests and tokens per minute (None = unlimited); every key's allowance starts full."""
        self._admin("POST", "/admin/limits", {"rpm": rpm, "tpm": tpm})

    def read_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The provider-side request log (the last ``limit`` entries), as the operator sees it. It never holds a key."""
        if not self.running:
            if self.log_path.is_file():
                return read_log_file(self.log_path, limit)
            raise ProviderError("The provider has stopped and its log was temporary: pass log_file=... to "
                                "start_provider to keep it.")
        data = self._admin("GET", "/admin/log" + (f"?limit={int(limit)}" if limit else ""))
        return data["data"]

    def stats(self) -> dict[str, Any]:
        """Operator statistics: sequences running and waiting, tokens generated, which weights are served."""
        return self._admin("GET", "/admin/stats")


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive whole number or None (unlimited), not {value!r}")


def start_provider(model: str | None = None, *, n_keys: int = 1, rpm: int | None = None, tpm: int | None = None,
                   logit_bias_mode: str = "post-2024", log_file: str | os.PathLike | None = None,
                   served_name: str = DEFAULT_SERVED_NAME, max_batch: int = DEFAULT_MAX_BATCH,
                   threads: int = DEFAULT_THREADS, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
                   moderation: str | os.PathLike | None = None) -> ProviderHandle:
    """Start the provider on a free port of 127.0.0.1 and wait until it answers.

    ``model``: what to serve (a ``load_model`` name or folder; None = what ``load_model()``
    would choose). ``n_keys`` learner keys are made up (``api_keys``), plus an admin key.
    ``rpm``/``tpm``: per-key requests and tokens per minute (None = unlimited).
    ``logit_bias_mode``: "post-2024" (default) or "pre-2024". ``log_file``: where the request
    log goes (default: a temporary file, removed when the provider stops). ``threads``: torch CPU
    threads of the server (1 is fastest on a shared or busy machine). ``served_name`` and
    ``max_batch`` as the command line's ``--served-name`` and ``--max-batch``. ``moderation``: a
    moderation policy file, as ``--moderation`` (see ``glassbox/provider/moderation.py``).

    Returns a running :class:`ProviderHandle`; use it in a ``with`` block (or call ``stop()``).
    Raises :class:`ProviderStartError` with the reason if the server cannot start.
    """
    if not isinstance(n_keys, int) or isinstance(n_keys, bool) or not 1 <= n_keys <= 10_000:
        raise ValueError(f"n_keys must be a whole number from 1 to 10,000, not {n_keys!r}")
    _check_positive("rpm", rpm)
    _check_positive("tpm", tpm)
    _check_positive("max_batch", max_batch)
    _check_positive("threads", threads)
    if logit_bias_mode not in LOGIT_BIAS_MODES:
        raise ValueError(f"logit_bias_mode must be one of {LOGIT_BIAS_MODES}, not {logit_bias_mode!r}")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a load_model name or a folder path, not {type(model).__name__}")

    workdir = Path(tempfile.mkdtemp(prefix="glassbox-provider-"))
    api_keys = [new_key() for _ in range(n_keys)]
    admin_key = new_key("sk-glassbox-admin-")
    keys_file, admin_file = workdir / "keys.txt", workdir / "admin_key.txt"
    for path, text in ((keys_file, "".join(f"key-{i} {key}\n" for i, key in enumerate(api_keys, start=1))),
                       (admin_file, admin_key + "\n")):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
    log_path = Path(log_file).expanduser().resolve() if log_file is not None else workdir / "requests.jsonl"
    server_log = workdir / "server.log"

    sock = _free_socket()
    port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "glassbox.provider",
        "--host", "127.0.0.1", "--port", str(port), "--fd", str(sock.fileno()),
        "--keys-file", str(keys_file), "--admin-key-file", str(admin_file),
        "--parent-pid", str(os.getpid()), "--cleanup-dir", str(workdir), "--log-file", str(log_path),
        "--served-name", served_name, "--logit-bias-mode", logit_bias_mode, "--max-batch", str(max_batch),
        "--threads", str(threads),
    ]
    if model is not None:
        command += ["--model", os.fspath(model)]
    if moderation is not None:
        command += ["--moderation", os.fspath(Path(moderation).expanduser().resolve())]
    if rpm is not None:
        command += ["--rpm", str(rpm)]
    if tpm is not None:
        command += ["--tpm", str(tpm)]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        with open(server_log, "wb") as output:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       pass_fds=(sock.fileno(),), env=environment, start_new_session=True)
    except BaseException:
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    sock.close()  # the server holds its own copy
    handle = ProviderHandle(process, port, api_keys, admin_key, served_name, log_path, server_log, workdir,
                            keep_log=log_file is not None)
    with _LIVE_LOCK:
        _LIVE.add(handle)
    try:
        handle.wait_ready(startup_timeout)
    except BaseException as error:
        message = None
        if isinstance(error, ProviderStartError):
            message = str(error)  # read the log before stop() removes it
        handle.stop()
        if message is not None:
            raise ProviderStartError(message) from None
        raise
    return handle


def stop_all() -> None:
    """Stop every provider this process started (runs at interpreter exit)."""
    with _LIVE_LOCK:
        handles = list(_LIVE)
    for handle in handles:
        try:
            handle.stop()
        except Exception:  # noqa: BLE001 - at exit, keep stopping the others
            pass


# At a normal exit; if this process is killed instead, each server notices and stops itself (lifeline.py).
atexit.register(stop_all)
