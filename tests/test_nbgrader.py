"""Teachers can use the notebooks with nbgrader: generate_assignment, then autograde.

Runs for every chapter, in a throw-away course directory (source/<assignment>/NN_topic.ipynb):
- ``nbgrader generate_assignment`` works on the exercise notebook and on the solutions
  notebook, and the released notebook contains no solution code (the exercise release is
  checked inside the autograde test, which needs it anyway);
- ``nbgrader autograde`` gives a submission of the solutions notebook full points and
  an untouched released notebook zero.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from glassbox.paths import REPO_DIR

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
NAMES = sorted(path.name for path in (REPO_DIR / "solutions").glob("*.ipynb"))
DEF = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def assignment(name: str) -> str:
    """nbgrader's assignment name for a chapter notebook: ps02 for 02_anatomy.ipynb."""
    return "ps" + name.split("_")[0]


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # nbgrader runs the `alembic` executable that sits next to this Python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args,
                             f"--CourseDirectory.root={course}"],
                            cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def solution_cells(name: str) -> list:
    """The code cells of solutions/<name> that hold a solution region."""
    return [cell for cell in nbformat.read(REPO_DIR / "solutions" / name, as_version=4).cells
            if cell.cell_type == "code" and BEGIN in cell.source]


def solution_lines(name: str) -> set[str]:
    """Every non-blank, non-comment line inside a solution region of solutions/<name>."""
    lines: set[str] = set()
    for cell in solution_cells(name):
        inside = False
        for line in cell.source.splitlines():
            if line.strip() == BEGIN:
                inside = True
            elif line.strip() == END:
                inside = False
            elif inside and line.strip() and not line.strip().startswith("#"):
                lines.add(line)
    return lines


def make_course(tmp_path: Path, source: Path, name: str) -> Path:
    course = tmp_path / "course"
    (course / "source" / assignment(name)).mkdir(parents=True)
    shutil.copy(source, course / "source" / assignment(name) / name)
    return course


def assert_released_without_solutions(course: Path, name: str) -> None:
    """The released notebook keeps every exercise's function but none of its solution code."""
    released = nbformat.read(course / "release" / assignment(name) / name, as_version=4)
    text = "\n".join(cell.source for cell in released.cells)
    assert BEGIN not in text and END not in text
    leaked = [line for line in solution_lines(name) if line in text.splitlines()]
    assert not leaked, leaked
    functions = [DEF.search(cell.source).group(1) for cell in solution_cells(name)]
    assert functions
    for function in functions:
        assert f"def {function}(" in text  # nbgrader replaced the body only
    assert all(not cell.get("outputs") for cell in released.cells if cell.cell_type == "code"
               if cell.metadata.get("nbgrader", {}).get("grade"))


@pytest.mark.parametrize("name", NAMES)
def test_generate_assignment_from_solutions_releases_no_solutions(tmp_path: Path, name: str) -> None:
    """A teacher may also release straight from solutions/."""
    course = make_course(tmp_path, REPO_DIR / "solutions" / name, name)
    nbgrader(course, "generate_assignment", assignment(name))
    assert_released_without_solutions(course, name)


@pytest.mark.parametrize("name", NAMES)
def test_release_then_autograde_gives_solutions_full_points_and_stubs_zero(tmp_path: Path, name: str) -> None:
    from nbgrader.api import Gradebook

    ps = assignment(name)
    course = make_course(tmp_path, REPO_DIR / "exercises" / name, name)
    nbgrader(course, "generate_assignment", ps)
    assert_released_without_solutions(course, name)
    for student, source in [("solver", REPO_DIR / "solutions" / name),
                            ("blank", course / "release" / ps / name)]:
        target = course / "submitted" / student / ps
        target.mkdir(parents=True)
        shutil.copy(source, target / name)
    nbgrader(course, "autograde", ps, "--create", "--Execute.timeout=600")  # cells that start a provider take longer than nbgrader's 30 s default
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        solver = gradebook.find_submission(ps, "solver")
        blank = gradebook.find_submission(ps, "blank")
        assert solver.max_score > 0
        assert solver.score == solver.max_score
        assert blank.score == 0
