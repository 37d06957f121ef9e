"""Time every notebook and measure its kernel's peak memory (``make bench``).

    python scripts/bench.py                                  # the model GLASSBOX_MODEL names, else tinygpt
    GLASSBOX_MODEL=gpt2-untrained python scripts/bench.py
    python scripts/bench.py notebooks/00_setup_check.ipynb   # only some notebooks

Prints one row per notebook in ``notebooks/`` and ``solutions/``: wall-clock seconds
(kernel start included) and peak resident memory in MB of the notebook's kernel,
the process where the model lives, together with any processes the kernel starts.
Two last rows time the loader's fallback: ``choose_model()`` with no model named and
HF_HUB_OFFLINE unset, which asks the Hub and, without an answer, picks TinyGPT. The
first asks the real Hub (on a machine without internet access it fails at once); the
second asks a local socket that accepts the connection and never answers, the worst
case, which the loader cuts off after 3 s.

Each run is saved to ``.bench/last_<model>.json``; the next run for the same model
shows those figures beside its own, with the differences.

When no notebook is named (``make bench``), the provider's benchmark follows
(``scripts/bench_provider.py``: its overhead, a class of 30 clients, the chapters'
workloads); ``--no-provider`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import psutil

from glassbox.course_env import apply_quiet_env
from run_notebooks import REPO_DIR, NotebookFailed, course_notebooks, execute, shown

BENCH_DIR = REPO_DIR / ".bench"
DEFAULT_MODEL = "tinygpt"
SAMPLE_SECONDS = 0.05
FALLBACK_PREFIX = "loader fallback"
NO_HUB_ROW = f"{FALLBACK_PREFIX}: the Hub as it is here"
SILENT_HUB_ROW = f"{FALLBACK_PREFIX}: a Hub that never answers"

FALLBACK_CODE = """
import json, time
from glassbox.loader import choose_model
start = time.perf_counter()
name, reason = choose_model()
print(json.dumps({"seconds": time.perf_counter() - start, "model": name, "reason": reason}))
"""


@dataclass
class Row:
    """One line of the table. ``None`` means not measured (or the notebook failed)."""

    name: str
    seconds: float | None
    peak_mb: float | None
    note: str = ""


class PeakMemory:
    """Samples the memory of a process and its children in a background thread; keeps the peak."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        """Start sampling process ``pid`` (and every process it starts) until ``stop()``."""
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Stop sampling; return the peak in MB, or None if nothing was sampled."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak_bytes / 2**20 if self.peak_bytes else None

    def _sample(self, pid: int) -> None:
        try:
            process = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                processes = [process, *process.children(recursive=True)]
                total = 0
                for each in processes:
                    try:
                        total += each.memory_info().rss
                    except psutil.Error:  # a child ended between listing and reading it
                        pass
            except psutil.Error:  # the kernel itself has ended
                return
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)


def bench_notebook(path: Path) -> Row:
    """Run one notebook in a fresh kernel; return its seconds and its kernel's peak memory."""
    memory = PeakMemory()
    start = time.perf_counter()
    try:
        execute(path, on_kernel_start=memory.watch)
    except NotebookFailed as failure:
        memory.stop()
        print(failure, file=sys.stderr)
        return Row(shown(path), None, None, "FAILED")
    seconds = time.perf_counter() - start
    return Row(shown(path), seconds, memory.stop())


def bench_fallback(name: str, endpoint: str | None = None) -> Row:
    """Time ``choose_model()`` in a fresh Python with no model named and HF_HUB_OFFLINE unset.

    ``endpoint`` replaces the Hub's address (HF_ENDPOINT) when given.
    """
    env = {key: value for key, value in os.environ.items() if key not in {"HF_HUB_OFFLINE", "GLASSBOX_MODEL"}}
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_CODE], env=env, cwd=REPO_DIR, capture_output=True, text=True
    )
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return Row(name, None, None, "FAILED")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return Row(name, answer["seconds"], None, f"chose {answer['model']}: {answer['reason']}")


def bench_fallbacks() -> list[Row]:
    """The loader's fallback against the Hub as this machine sees it, then against a silent one."""
    rows = [bench_fallback(NO_HUB_ROW)]
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts, never answers
        port = silent.getsockname()[1]
        rows.append(bench_fallback(SILENT_HUB_ROW, f"http://127.0.0.1:{port}"))
    return rows


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(now: float | None, before: float | None, digits: int) -> str:
    if now is None or before is None:
        return "-"
    difference = round(now - before, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{difference:+.{digits}f}"


def totals(rows: list[Row]) -> Row:
    """The total seconds and the largest peak over the notebook rows that were measured."""
    seconds = [row.seconds for row in rows if row.seconds is not None]
    peaks = [row.peak_mb for row in rows if row.peak_mb is not None]
    return Row("total (seconds) / max (MB)", sum(seconds) if seconds else None, max(peaks) if peaks else None)


def format_table(rows: list[Row], fallbacks: list[Row] | None = None, previous: dict[str, Row] | None = None) -> str:
    """A plain text table: one row per notebook, a totals row, then the fallback rows.

    With ``previous`` (rows of the last saved run, by name) each figure is shown beside
    the previous one, with the difference.
    """
    compare = previous is not None
    header = ["notebook", "seconds", "peak MB"]
    if compare:
        header = ["notebook", "seconds", "before", "delta", "peak MB", "before", "delta"]
    total = totals(rows)
    all_rows = [*rows, total, *(fallbacks or [])]
    old_rows = dict(previous or {})
    old_rows[total.name] = totals([row for name, row in old_rows.items() if not name.startswith(FALLBACK_PREFIX)])

    table = []
    for row in all_rows:
        cells = [row.name, _number(row.seconds, 2), _number(row.peak_mb, 0)]
        if compare:
            old = old_rows.get(row.name, Row(row.name, None, None))
            cells = [
                row.name,
                _number(row.seconds, 2), _number(old.seconds, 2), _delta(row.seconds, old.seconds, 2),
                _number(row.peak_mb, 0), _number(old.peak_mb, 0), _delta(row.peak_mb, old.peak_mb, 0),
            ]
        if row.note == "FAILED":
            cells[0] += "  [FAILED]"
        table.append(cells)

    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))]).rstrip()

    rule = "-" * len(render(header))
    lines = [render(header), rule, *(render(cells) for cells in table[: len(rows)]), rule]
    lines += [render(cells) for cells in table[len(rows):]]
    return "\n".join(lines)


def saved_path(model: str) -> Path:
    """Where the figures of the last run for ``model`` are kept."""
    return BENCH_DIR / f"last_{re.sub(r'[^A-Za-z0-9._-]', '_', model)}.json"


def load_previous(model: str) -> tuple[dict[str, Row], str] | None:
    """The rows of the last saved run for ``model`` (by name) and when it ran, if there is one."""
    path = saved_path(model)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = {row["name"]: Row(**row) for row in data["rows"]}
    return rows, data.get("saved", "?")


def save(model: str, rows: list[Row], fallbacks: list[Row]) -> Path:
    """Save this run's figures for the next run to compare with."""
    path = saved_path(model)
    path.parent.mkdir(exist_ok=True)
    data = {
        "model": model,
        "saved": datetime.now().isoformat(timespec="seconds"),
        "rows": [asdict(row) for row in [*rows, *fallbacks]],
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Benchmark the notebooks; print the table; return 1 if a notebook failed."""
    parser = argparse.ArgumentParser(description="Time every notebook and measure its kernel's peak memory.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="only these notebooks (default: all)")
    parser.add_argument("--no-provider", action="store_true",
                        help="skip the provider's benchmark (it runs after the notebooks when no notebook is named)")
    args = parser.parse_args(argv)

    apply_quiet_env()
    if os.environ.get("GLASSBOX_MODEL", "").strip():
        model = os.environ["GLASSBOX_MODEL"].strip()
        print(f"Model: {model} (from GLASSBOX_MODEL)")
    else:
        model = os.environ["GLASSBOX_MODEL"] = DEFAULT_MODEL
        print(f"Model: {model} (GLASSBOX_MODEL is not set, so the default)")

    paths = [path.resolve() for path in args.notebooks] or course_notebooks()
    rows = []
    for number, path in enumerate(paths, start=1):
        print(f"[{number}/{len(paths)}] {shown(path)} ...", end=" ", flush=True)
        row = bench_notebook(path)
        rows.append(row)
        print(row.note or f"{row.seconds:.1f} s, {_number(row.peak_mb, 0)} MB", flush=True)
    fallbacks = bench_fallbacks()

    previous = load_previous(model)
    print()
    print(format_table(rows, fallbacks, previous[0] if previous else None))
    print()
    print("seconds: wall-clock time to run the notebook top to bottom, kernel start included.")
    print(f"peak MB: largest resident memory of the notebook's kernel and its child processes, sampled every {SAMPLE_SECONDS} s.")
    for fallback in fallbacks:
        print(f"{fallback.name}: {fallback.note}")
    if previous:
        print(f"before: the run saved on {previous[1]} in {shown(saved_path(model))}.")
    print(f"Saved this run to {shown(save(model, rows, fallbacks))}.")
    failed = any(row.note == "FAILED" for row in rows)
    if not args.notebooks and not args.no_provider:
        from bench_provider import run as bench_provider

        try:
            bench_provider()
        except Exception as error:  # noqa: BLE001 - reported; the notebook tables above still stand
            print(f"The provider benchmark failed: {type(error).__name__}: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
