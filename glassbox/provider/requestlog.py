"""The provider-side request log: one JSON object per line, what an operator can read.

Each line has the time, the request id, the key's label (``key_id``, never the key), the
path and status, the model name asked for, the prompt or messages, the other parameters,
the token counts, and, for the operator's eyes only, which weights answered. This is the
course's privacy lesson: whatever you send to a provider, the provider can keep.

The log is bounded, so that nobody (with a key or without) can fill the disk through it:

* a line holds at most ``MAX_LINE_BYTES``: a string longer than ``MAX_FIELD_CHARS`` keeps
  its start and says how many characters were cut, a list or object longer than
  ``MAX_ITEMS`` keeps its first items and says how many were cut, and the line's
  ``"truncated"`` field names every field that was shortened;
* the file is rotated at ``max_bytes`` (the previous file becomes ``NAME.1``, replacing
  an older one), so the log takes at most twice that;
* the file is created readable by its owner only (mode 0600): it holds every prompt;
* every request that is answered gets its line, whatever it holds: a lone surrogate
  (``"\\ud800"``, valid JSON but not valid UTF-8) is written as the text ``\\ud800``.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAX_FIELD_CHARS = 2_000  #: characters of one string kept in a log line
MAX_ITEMS = 100  #: items of one list or object kept in a log line
MAX_LINE_BYTES = 64 * 1024  #: bytes of one log line
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  #: the log file is rotated at this size
BULKY_FIELDS = ("prompt", "messages", "parameters", "path")  #: dropped, in this order, from a line still too long


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate written as ``\\udXXX`` (so it can be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _bound(value: Any, cut: list[bool]) -> Any:
    """``value`` with long strings, lists and objects shortened (``cut[0]`` set if anything was)."""
    if isinstance(value, str):
        value = clean_text(value)
        if len(value) > MAX_FIELD_CHARS:
            cut[0] = True
            return f"{value[:MAX_FIELD_CHARS]}...[{len(value) - MAX_FIELD_CHARS:,} more characters not logged]"
        return value
    if isinstance(value, dict):
        items = list(value.items())
        bounded = {_bound(str(key), cut): _bound(item, cut) for key, item in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            cut[0] = True
            bounded["..."] = f"{len(items) - MAX_ITEMS:,} more entries not logged"
        return bounded
    if isinstance(value, (list, tuple)):
        bounded_list = [_bound(item, cut) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            cut[0] = True
            bounded_list.append(f"...{len(value) - MAX_ITEMS:,} more items not logged")
        return bounded_list
    return value


def bound_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as it is logged: every field bounded, ``"truncated"`` naming the fields that were cut."""
    truncated: list[str] = list(entry.get("truncated", []))  # fields the caller has shortened already
    bounded: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "truncated":
            continue
        cut = [False]
        bounded[clean_text(str(key))] = _bound(value, cut)
        if cut[0] and key not in truncated:
            truncated.append(str(key))
    if truncated:
        bounded["truncated"] = truncated
    return bounded


def format_line(entry: dict[str, Any]) -> str:
    """One JSON line of at most ``MAX_LINE_BYTES`` bytes (plus the newline) for ``entry``."""
    record = bound_entry(entry)
    line = json.dumps(record, ensure_ascii=False, default=str)
    for field in BULKY_FIELDS:
        if len(line.encode("utf-8", "backslashreplace")) <= MAX_LINE_BYTES:
            break
        if field in record:
            record[field] = f"[not logged: {len(json.dumps(record[field], ensure_ascii=False, default=str)):,} characters]"
            record["truncated"] = sorted({*record.get("truncated", []), field})
            line = json.dumps(record, ensure_ascii=False, default=str)
    if len(line.encode("utf-8", "backslashreplace")) > MAX_LINE_BYTES:  # only unexpected fields are left: keep the essentials
        keep = ("time", "request_id", "key_id", "method", "status", "latency_ms", "error")
        record = {key: record[key] for key in keep if key in record}
        record["truncated"] = ["line"]
        line = json.dumps(record, ensure_ascii=False, default=str)
    return line


def _open_private(path: Path):
    """Open ``path`` for appending, created (or made) readable and writable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    except OSError:  # not ours to change (a file the operator made): it keeps its mode
        pass
    return os.fdopen(descriptor, "a", encoding="utf-8", errors="backslashreplace")


class RequestLog:
    """Append-only JSON lines file, bounded and rotated (see the module docstring). Thread-safe; each line is flushed."""

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._file = _open_private(self.path)
        self._size = self.path.stat().st_size

    def write(self, entry: dict[str, Any]) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), **entry}
        line = format_line(record) + "\n"
        size = len(line.encode("utf-8", "backslashreplace"))
        with self._lock:
            if self._size and self._size + size > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            self._size += size

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = _open_private(self.path)
        self._size = 0

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` entries (all if None) of the current file, oldest first."""
        return read_log_file(self.path, limit)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_log_file(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Parse a request log file; a torn last line (a write in progress) is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines if limit is None else lines[-limit:]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
