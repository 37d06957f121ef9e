"""Generate ``exercises/NN_topic.ipynb`` from ``solutions/NN_topic.ipynb`` (``make exercises``).

The solutions notebook is the single source. In it, every answer sits inside a
region of a function body::

    def count_parameters(config) -> int:
        ### BEGIN SOLUTION
        ...the answer...
        ### END SOLUTION

The generated exercise notebook keeps everything, except that:

* each region's body becomes ``raise NotImplementedError(...)`` pointing at the hints
  (the ``### BEGIN/END SOLUTION`` markers stay, so ``nbgrader generate_assignment`` run
  on the exercise notebook replaces only the region and keeps the signature);
* the outputs of solution cells and check cells (they would reveal the answers) are
  cleared, with their execution counts;
* every check cell that follows a stubbed solution cell is tagged ``raises-exception``:
  it calls the learner's function, so it is the cell that raises NotImplementedError
  until the exercise is done (nbval tolerates it; tests/test_exercises.py verifies it);
* a Colab badge (scripts/stamp_colab.py) points at the exercise notebook, not the solutions.

Rules the solutions notebook must follow (the script stops with a message otherwise):
solution regions sit inside a function body (indented), in code cells marked as nbgrader
solution cells with a ``grade_id``; check cells are nbgrader ``grade: true`` cells.

The output is a pure function of the input, so running the script twice changes nothing,
and ``--check`` (used by tests/test_exercises.py) reports any drift without writing.

    python scripts/make_exercises.py                 # regenerate every exercise notebook
    python scripts/make_exercises.py --check         # exit 1 if exercises/ is out of date
    python scripts/make_exercises.py solutions/02_anatomy.ipynb
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

from glassbox.colab_stamp import restamp_if_stamped

REPO_DIR = Path(__file__).resolve().parent.parent
SOLUTIONS_DIR = REPO_DIR / "solutions"
EXERCISES_DIR = REPO_DIR / "exercises"

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
RAISES_TAG = "raises-exception"
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")


class SourceError(ValueError):
    """The solutions notebook breaks a rule of the exercise format."""


def _stub_region(lines: list[str], where: str) -> list[str]:
    """Replace the body of every solution region in ``lines`` by a raising stub."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != BEGIN:
            if line.strip() == END:
                raise SourceError(f"{where}: '{END}' without a '{BEGIN}' before it.")
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if not indent:
            raise SourceError(
                f"{where}: a solution region must sit inside a function body (indented), "
                "so that the check cell, not this cell, raises NotImplementedError."
            )
        function = None
        for previous in reversed(out):
            match = _DEF.match(previous)
            if match and len(match.group(1)) < len(indent):
                function = match.group(2)
                break
        if function is None:
            raise SourceError(f"{where}: no enclosing 'def' found for a solution region.")
        j = i + 1
        while j < len(lines) and lines[j].strip() != END:
            if lines[j].strip() == BEGIN:
                raise SourceError(f"{where}: nested '{BEGIN}'.")
            j += 1
        if j == len(lines):
            raise SourceError(f"{where}: '{BEGIN}' without '{END}'.")
        message = f"{function}: write your code here (the hints are just above this cell)."
        out += [line, f'{indent}raise NotImplementedError("{message}")', lines[j]]
        i = j + 1
    return out


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def generate(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return the exercise notebook for a solutions notebook (the input is not modified)."""
    nb = copy.deepcopy(solution)
    grade_ids: set[str] = set()
    stubbed_since_last_check = False
    n_regions = 0
    for index, cell in enumerate(nb.cells, start=1):
        where = f"{name}, cell {index}"
        meta = _nbgrader(cell)
        grade_id = meta.get("grade_id")
        if grade_id:
            if grade_id in grade_ids:
                raise SourceError(f"{where}: grade_id {grade_id!r} is used twice.")
            grade_ids.add(grade_id)
        has_region = BEGIN in cell.source
        if has_region and cell.cell_type != "code":
            raise SourceError(f"{where}: solution regions are supported in code cells only.")
        if cell.cell_type != "code":
            continue
        if has_region:
            if not (meta.get("solution") and grade_id):
                raise SourceError(
                    f"{where}: a cell with a solution region needs nbgrader metadata "
                    "(solution: true and a grade_id)."
                )
            cell.source = "\n".join(_stub_region(cell.source.split("\n"), where))
            n_regions += 1
            stubbed_since_last_check = True
        is_check = bool(meta.get("grade"))
        if has_region or is_check:
            cell.outputs = []
            cell.execution_count = None
        if is_check and stubbed_since_last_check:
            tags = list(cell.metadata.get("tags", []))
            if RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
            cell.metadata["tags"] = tags
        if is_check:
            stubbed_since_last_check = False
    if n_regions == 0:
        raise SourceError(f"{name}: no '{BEGIN}' region found: nothing to turn into exercises.")
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text written to disk (nbformat's own layout, trailing newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def exercise_path(solution_path: Path) -> Path:
    """Where the exercise notebook for a solutions notebook goes."""
    return EXERCISES_DIR / solution_path.name


def build(solution_path: Path) -> str:
    """Read a solutions notebook and return the text of its exercise notebook.

    A Colab stamp (badge and set-up cell, scripts/stamp_colab.py) is kept, with the badge
    pointing at the exercise notebook: stamping then generating equals generating then stamping.
    """
    solution = nbformat.read(solution_path, as_version=4)
    exercise = generate(solution, name=solution_path.name)
    return render(restamp_if_stamped(exercise, f"{EXERCISES_DIR.name}/{solution_path.name}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate exercises/ from solutions/.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any exercise notebook is out of date")
    parser.add_argument("solutions", nargs="*", type=Path,
                        help="solutions notebooks (default: solutions/*.ipynb)")
    args = parser.parse_args(argv)
    paths = args.solutions or sorted(SOLUTIONS_DIR.glob("*.ipynb"))
    stale = []
    for path in paths:
        target = exercise_path(path)
        try:
            text = build(path)
        except SourceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        current = target.read_text(encoding="utf-8") if target.exists() else None
        shown = target.relative_to(REPO_DIR) if target.is_relative_to(REPO_DIR) else target
        if current == text:
            print(f"{shown} is up to date")
            continue
        stale.append(shown)
        if args.check:
            print(f"{shown} is out of date: run `make exercises`", file=sys.stderr)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {shown}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
