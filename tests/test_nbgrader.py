"""Teachers can use the notebooks with nbgrader: generate_assignment, then autograde.

Runs for every chapter, in a throw-away course directory (source/<assignment>/NN_topic.ipynb),
through nbgrader's own Python API (``NbGraderAPI``, what its formgrader calls), so nbgrader is
imported once per test worker instead of once per command; each course starts from a copy of an
empty gradebook that nbgrader created (and stamped with alembic) once per worker. One test runs
the ``nbgrader`` command line as a teacher types it.
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

# nbgrader 0.9.6's autograde warns about its own SQLAlchemy session use (the command line prints
# the same warnings to its stderr); they are not about the course.
pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
NAMES = sorted(path.name for path in (REPO_DIR / "solutions").glob("*.ipynb"))
DEF = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def assignment(name: str) -> str:
    """nbgrader's assignment name for a chapter notebook: ps02 for 02_anatomy.ipynb."""
    return "ps" + name.split("_")[0]


def nbgrader_cli(course: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``nbgrader`` command line, as a teacher types it."""
    env = dict(os.environ)
    # nbgrader runs the `alembic` executable that sits next to this Python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args,
                             f"--CourseDirectory.root={course}"],
                            cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def empty_gradebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty gradebook made by nbgrader itself (it asks the ``alembic`` executable next to this
    Python for its schema version, about 2.5 s); each test's course starts from a copy."""
    from nbgrader.api import Gradebook

    path = tmp_path_factory.mktemp("gradebook") / "gradebook.db"
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + saved
    try:
        with Gradebook(f"sqlite:///{path}"):
            pass
    finally:
        os.environ["PATH"] = saved
    return path


def nbgrader(course: Path, command: str, assignment_id: str, student_id: str | None = None) -> str:
    """Run ``nbgrader <command>`` through ``NbGraderAPI`` in this process; its log on success."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.root = str(course)
    config.Execute.timeout = 600  # cells that start a provider take longer than nbgrader's 30 s default
    api = NbGraderAPI(config=config)
    if command == "generate_assignment":
        result = api.generate_assignment(assignment_id)
    elif command == "autograde":
        result = api.autograde(assignment_id, student_id)
    else:
        raise ValueError(f"no such nbgrader command here: {command}")
    assert result["success"], result.get("log", "") + result.get("error", "")
    assert "[ERROR]" not in result.get("log", ""), result["log"]
    return result.get("log", "")


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


def make_course(tmp_path: Path, source: Path, name: str, gradebook: Path | None = None) -> Path:
    """A course directory with one chapter in source/, and a copy of ``gradebook`` if given."""
    course = tmp_path / "course"
    (course / "source" / assignment(name)).mkdir(parents=True)
    shutil.copy(source, course / "source" / assignment(name) / name)
    if gradebook is not None:
        shutil.copy(gradebook, course / "gradebook.db")
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
def test_generate_assignment_from_solutions_releases_no_solutions(
        tmp_path: Path, name: str, empty_gradebook: Path) -> None:
    """A teacher may also release straight from solutions/."""
    course = make_course(tmp_path, REPO_DIR / "solutions" / name, name, empty_gradebook)
    nbgrader(course, "generate_assignment", assignment(name))
    assert_released_without_solutions(course, name)


def test_the_command_line_releases_a_chapter(tmp_path: Path) -> None:
    """``nbgrader generate_assignment`` typed at a shell, with a new gradebook, does the same."""
    name = NAMES[0]
    course = make_course(tmp_path, REPO_DIR / "exercises" / name, name)
    nbgrader_cli(course, "generate_assignment", assignment(name))
    assert (course / "gradebook.db").exists()
    assert_released_without_solutions(course, name)


@pytest.mark.parametrize("name", NAMES)
def test_release_then_autograde_gives_solutions_full_points_and_stubs_zero(
        tmp_path: Path, name: str, empty_gradebook: Path) -> None:
    from nbgrader.api import Gradebook

    ps = assignment(name)
    course = make_course(tmp_path, REPO_DIR / "exercises" / name, name, empty_gradebook)
    nbgrader(course, "generate_assignment", ps)
    assert_released_without_solutions(course, name)
    for student, source in [("solver", REPO_DIR / "solutions" / name),
                            ("blank", course / "release" / ps / name)]:
        target = course / "submitted" / student / ps
        target.mkdir(parents=True)
        shutil.copy(source, target / name)
        nbgrader(course, "autograde", ps, student)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        solver = gradebook.find_submission(ps, "solver")
        blank = gradebook.find_submission(ps, "blank")
        assert solver.max_score > 0
        assert solver.score == solver.max_score
        assert blank.score == 0
