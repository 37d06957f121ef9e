"""Teachers can use the notebooks with nbgrader: generate_assignment, then autograde.

Runs in a throw-away course directory (source/<assignment>/02_anatomy.ipynb):
- ``nbgrader generate_assignment`` works on the exercise notebook and on the solutions
  notebook, and the released notebook contains no solution code;
- ``nbgrader autograde`` gives a submission of the solutions notebook full points and
  an untouched released notebook zero.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from glassbox.paths import REPO_DIR

ASSIGNMENT = "ps02"
NAME = "02_anatomy.ipynb"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # nbgrader runs the `alembic` executable that sits next to this Python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args,
                             f"--CourseDirectory.root={course}"],
                            cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def solution_lines() -> set[str]:
    """Every non-blank, non-comment line inside a solution region of solutions/."""
    lines: set[str] = set()
    for cell in nbformat.read(REPO_DIR / "solutions" / NAME, as_version=4).cells:
        inside = False
        for line in cell.source.splitlines():
            if line.strip() == BEGIN:
                inside = True
            elif line.strip() == END:
                inside = False
            elif inside and line.strip() and not line.strip().startswith("#"):
                lines.add(line)
    return lines


def make_course(tmp_path: Path, source: Path) -> Path:
    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    shutil.copy(source, course / "source" / ASSIGNMENT / NAME)
    return course


@pytest.mark.parametrize("folder", ["exercises", "solutions"])
def test_generate_assignment_releases_no_solutions(tmp_path: Path, folder: str) -> None:
    course = make_course(tmp_path, REPO_DIR / folder / NAME)
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    released = nbformat.read(course / "release" / ASSIGNMENT / NAME, as_version=4)
    text = "\n".join(cell.source for cell in released.cells)
    assert BEGIN not in text and END not in text
    leaked = [line for line in solution_lines() if line in text.splitlines()]
    assert not leaked, leaked
    for function in ("count_parameters", "conv1d_to_linear", "split_qkv",
                     "read_safetensors_header", "model_size_mb"):
        assert f"def {function}(" in text  # nbgrader replaced the body only
    assert all(not cell.get("outputs") for cell in released.cells if cell.cell_type == "code"
               if cell.metadata.get("nbgrader", {}).get("grade"))


def test_autograde_gives_solutions_full_points(tmp_path: Path) -> None:
    from nbgrader.api import Gradebook

    course = make_course(tmp_path, REPO_DIR / "exercises" / NAME)
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    for student, source in [("solver", REPO_DIR / "solutions" / NAME),
                            ("blank", course / "release" / ASSIGNMENT / NAME)]:
        target = course / "submitted" / student / ASSIGNMENT
        target.mkdir(parents=True)
        shutil.copy(source, target / NAME)
    nbgrader(course, "autograde", ASSIGNMENT, "--create")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        solver = gradebook.find_submission(ASSIGNMENT, "solver")
        blank = gradebook.find_submission(ASSIGNMENT, "blank")
        assert solver.max_score > 0
        assert solver.score == solver.max_score
        assert blank.score == 0
