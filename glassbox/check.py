"""Check your own exercise notebook: ``make check NB=exercises/02_anatomy.ipynb``.

Same as ``python -m glassbox.check exercises/02_anatomy.ipynb``. It runs the notebook
from top to bottom in a fresh kernel, the way the course's tests do (nbval), but
without their tolerance for unfinished exercises, then prints one line per exercise:
passed, failed (with what is wrong and a hint) or not attempted yet.

It works on a copy in a temporary folder and never changes your file. It uses the
model you chose (``GLASSBOX_MODEL``), like the notebook itself. The exit code is 0
only if every exercise passed and no other cell failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

RAISES_TAG = "raises-exception"
NOT_ATTEMPTED = "NotImplementedError"
FAILED = "ExerciseFailed"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class CellResult:
    """What happened to one notebook cell under nbval."""

    outcome: str  # "passed", "failed", "skipped"
    ename: str | None = None
    evalue: str | None = None
    stdout: str = ""
    detail: str = ""


@dataclass
class Exercise:
    """One exercise: its solution cell and the check cells that follow it."""

    grade_id: str
    title: str
    solution_id: str
    check_ids: list[str] = field(default_factory=list)


def record_cell(results: dict[str, CellResult], item: Any, report: Any) -> None:
    """Record what one nbval cell item's ``report`` says into ``results``, keyed by cell id.

    Only failures and skips of setup or teardown are kept, and a failure is never overwritten
    by a later pass of the same cell. Errors shown in the cell's outputs are recorded even
    when nbval tolerated them (a cell tagged raises-exception), so a reader of ``results``
    sees every error, whatever the tags. Used by ``make check`` and by the test suite, which
    derives the same report from its own run of a notebook.
    """
    cell = getattr(item, "cell", None)
    if cell is None:
        return
    key = cell.get("id") or str(getattr(item, "cell_num", id(cell)))
    if report.when == "setup" and not report.skipped and report.passed:
        return
    if report.when == "teardown" and report.passed:
        return
    outputs = getattr(item, "test_outputs", None) or []
    result = CellResult(outcome="skipped" if report.skipped else
                        ("passed" if report.passed else "failed"))
    for out in outputs:
        if out.get("output_type") == "error":
            result.ename, result.evalue = out.get("ename"), out.get("evalue")
        elif out.get("output_type") == "stream" and out.get("name") == "stdout":
            result.stdout += out.get("text", "")
    if report.failed and result.ename is None:
        result.detail = _ANSI.sub("", str(report.longrepr))
    previous = results.get(key)
    if previous is None or previous.outcome == "passed":
        results[key] = result


class _Recorder:
    """pytest plugin: records the outcome of each nbval cell item, keyed by cell id."""

    def __init__(self) -> None:
        self.results: dict[str, CellResult] = {}
        self.collected = 0

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        self.collected = len(items)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: Any, call: Any):  # type: ignore[no-untyped-def]
        outcome = yield
        record_cell(self.results, item, outcome.get_result())


def find_exercises(nb: nbformat.NotebookNode) -> list[Exercise]:
    """The exercises of a notebook, from its nbgrader metadata, in order."""
    exercises: list[Exercise] = []
    title = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            if first.startswith("#") and "exercise" in first.lower():
                title = first.lstrip("#").strip()
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and meta.get("grade_id") and cell.cell_type == "code":
            exercises.append(Exercise(meta["grade_id"], title or meta["grade_id"], cell.get("id", "")))
            title = None
        elif meta.get("grade") and exercises:
            exercises[-1].check_ids.append(cell.get("id", ""))
    return exercises


def prepare_copy(nb: nbformat.NotebookNode, folder: Path, name: str) -> Path:
    """Write a copy of the notebook with the raises-exception tags removed."""
    copy = nbformat.from_dict(nb)
    for index, cell in enumerate(copy.cells):
        if not cell.get("id"):
            cell["id"] = f"cell-{index}"
        tags = cell.get("metadata", {}).get("tags")
        if tags and RAISES_TAG in tags:
            cell.metadata["tags"] = [t for t in tags if t != RAISES_TAG]
    target = folder / name
    nbformat.write(copy, target)
    return target


def run_nbval(notebook: Path, verbose: bool = False) -> tuple[int, _Recorder, str]:
    """Run pytest + nbval in this process on ``notebook``; return (exit code, recorder, log)."""
    from glassbox.course_env import apply_quiet_env
    from glassbox.paths import REPO_DIR

    apply_quiet_env()
    ini = notebook.parent / "pytest.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    args = [str(notebook), "-c", str(ini), "--rootdir", str(notebook.parent),
            "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q"]
    sanitize = REPO_DIR / "tests" / "nbval_sanitize.cfg"
    if sanitize.exists():
        args += ["--nbval-sanitize-with", str(sanitize)]
    recorder = _Recorder()
    log = io.StringIO()
    if verbose:
        code = pytest.main(args, plugins=[recorder])
    else:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = pytest.main(args, plugins=[recorder])
    return int(code), recorder, log.getvalue()


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.strip().splitlines())


def _verdict(exercise: Exercise, results: dict[str, CellResult]) -> tuple[str, str]:
    """(status, explanation) for one exercise: passed, failed or not attempted."""
    cells = [results.get(exercise.solution_id)] + [results.get(c) for c in exercise.check_ids]
    if any(r is not None and r.ename == NOT_ATTEMPTED for r in cells):
        return "not attempted", ""
    for r in cells:
        if r is None:
            continue
        if r.outcome == "skipped":
            return "failed", "not checked: an earlier cell timed out or the run stopped."
        if r.outcome == "failed" or r.ename:  # an error nbval tolerated (raises-exception) still fails
            if r.ename == FAILED:
                return "failed", r.evalue or ""
            if r.ename:
                return "failed", f"your code raised {r.ename}: {r.evalue}"
            return "failed", r.detail.strip().splitlines()[0] if r.detail.strip() else "failed"
    if not exercise.check_ids or any(results.get(c) is None for c in exercise.check_ids):
        return "failed", "the check cell did not run."
    return "passed", ""


def summarise(nb: nbformat.NotebookNode, exercises: list[Exercise],
              results: dict[str, CellResult]) -> tuple[str, bool]:
    """The report printed to the learner, and whether everything passed."""
    lines: list[str] = []
    exercise_cells = {e.solution_id for e in exercises} | {c for e in exercises for c in e.check_ids}
    other_failures = []
    for index, cell in enumerate(nb.cells, start=1):
        cid = cell.get("id") or f"cell-{index - 1}"
        r = results.get(cid)
        if cid in exercise_cells or r is None or r.outcome != "failed":
            continue
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        why = f"{r.ename}: {r.evalue}" if r.ename else (r.detail.strip().splitlines() or ["failed"])[0]
        other_failures.append(f"  ✗ cell {index} ({first[:50]!r}) failed: {why}")
    if other_failures:
        lines.append("Cells outside the exercises that failed (fix these first, later "
                     "exercises may depend on them):")
        lines += other_failures
        lines.append("")
    counts = {"passed": 0, "failed": 0, "not attempted": 0}
    marks = {"passed": "✓", "failed": "✗", "not attempted": "·"}
    for exercise in exercises:
        status, why = _verdict(exercise, results)
        counts[status] += 1
        lines.append(f"  {marks[status]} {exercise.title}: {status}")
        if why:
            lines.append(_indent(why))
    lines.append("")
    lines.append(f"{len(exercises)} exercises: {counts['passed']} passed, {counts['failed']} "
                 f"failed, {counts['not attempted']} not attempted.")
    ok = counts["passed"] == len(exercises) and not other_failures
    return "\n".join(lines), ok


def check_notebook(path: Path, verbose: bool = False) -> int:
    """Check one exercise notebook and print the report; return the exit code."""
    if not path.exists():
        print(f"No such file: {path}. Example: make check NB=exercises/02_anatomy.ipynb")
        return 2
    if path.is_dir() or path.suffix != ".ipynb":
        print(f"{path} is not a notebook (.ipynb file). "
              "Example: make check NB=exercises/02_anatomy.ipynb")
        return 2
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # noqa: BLE001 - any parse failure gets the same advice
        print(f"{path} could not be read as a Jupyter notebook ({type(error).__name__}: "
              f"{error}). Is it a .ipynb file saved by Jupyter?")
        return 2
    exercises = find_exercises(nb)
    if not exercises:
        print(f"{path} has no exercises (no cells with nbgrader solution metadata). "
              "Check a notebook from exercises/.")
        return 2
    print(f"Checking {path} on a copy (your file is not changed). This runs the whole "
          "notebook and takes a minute...", flush=True)
    with tempfile.TemporaryDirectory(prefix="glassbox-check-") as tmp:
        copy = prepare_copy(nb, Path(tmp), path.name)
        code, recorder, log = run_nbval(copy, verbose=verbose)
        if recorder.collected == 0:
            print("The notebook could not be run:")
            print(_indent(log[-2000:] or f"pytest exit code {code}", "  "))
            return 2
        reference = nbformat.read(copy, as_version=4)
        report, ok = summarise(reference, exercises, recorder.results)
    print()
    print(report)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m glassbox.check NOTEBOOK [--verbose]``."""
    parser = argparse.ArgumentParser(
        prog="python -m glassbox.check",
        description="Run your exercise notebook and say which exercises pass.")
    parser.add_argument("notebook", type=Path, help="e.g. exercises/02_anatomy.ipynb")
    parser.add_argument("--verbose", action="store_true", help="show pytest's own output too")
    args = parser.parse_args(argv)
    return check_notebook(args.notebook, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
