"""The provider-side request log: one JSON object per line, what an operator can read.

Each line has the time, the request id, the key's label (``key_id``, never the key), the
path and status, the model name asked for, the prompt or messages, the other parameters,
the token counts, and, for the operator's eyes only, which weights answered. This is the
course's privacy lesson: whatever you send to a provider, the provider can keep.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class RequestLog:
    """Append-only JSON lines file. Thread-safe; each line is flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the server's life

    def write(self, entry: dict[str, Any]) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), **entry}
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` entries (all if None), oldest first."""
        return read_log_file(self.path, limit)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_log_file(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Parse a request log file; a torn last line (a write in progress) is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines if limit is None else lines[-limit:]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
