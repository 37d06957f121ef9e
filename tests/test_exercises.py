"""The exercise mechanism: one source (solutions/), generated exercises, honest stubs.

- exercises/ is exactly what scripts/make_exercises.py generates from solutions/ (no drift),
  and generating is idempotent;
- no solution code leaks into exercises/, and every exercise carries its objective,
  difficulty, time, hints and nbgrader metadata;
- ``python -m glassbox.check`` reports passed / failed with hint / not attempted, exits
  non-zero unless all pass, and never modifies the learner's file;
- the test suite's own path (one nbval run per notebook, with make check's verdicts derived
  from it by tests/notebook_plugin.py) gives the same verdicts as ``make check``.

Untouched exercise notebooks raising NotImplementedError in exactly the tagged cells, every
solutions notebook passing ``make check`` and every exercises notebook reported as not
attempted are checked by the verdict items tests/notebook_plugin.py appends to each
notebook's own nbval run.
"""

from __future__ import annotations

import hashlib
import os
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from glassbox.paths import REPO_DIR

SOLUTIONS = sorted((REPO_DIR / "solutions").glob("*.ipynb"))
RAISES_TAG = "raises-exception"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_exercises",
                                                  REPO_DIR / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_exercises = load_generator()


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solution_regions(source: str) -> list[list[str]]:
    """The lines inside each BEGIN/END SOLUTION region of a cell."""
    regions, current = [], None
    for line in source.splitlines():
        if line.strip() == make_exercises.BEGIN:
            current = []
        elif line.strip() == make_exercises.END:
            regions.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return regions


def test_there_are_solutions() -> None:
    assert SOLUTIONS, "no solutions/*.ipynb found"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_exercises_do_not_drift_from_solutions(solution: Path) -> None:
    target = make_exercises.exercise_path(solution)
    assert target.exists(), f"{target.name} missing: run `make exercises`"
    generated = make_exercises.build(solution)
    assert generated == target.read_text(encoding="utf-8"), (
        f"exercises/{target.name} differs from what solutions/{solution.name} generates: "
        "run `make exercises` (never edit exercises/ by hand)")


def test_generation_is_idempotent(tmp_path: Path) -> None:
    assert make_exercises.main(["--check"]) == 0
    for solution in SOLUTIONS:
        assert make_exercises.build(solution) == make_exercises.build(solution)


def test_generator_rejects_top_level_region() -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    cell.metadata["nbgrader"] = {"solution": True, "grade_id": "x", "grade": False,
                                 "locked": False, "schema_version": 3}
    nb.cells = [cell]
    with pytest.raises(make_exercises.SourceError, match="inside a function body"):
        make_exercises.generate(nb)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_notebook_structure(solution: Path) -> None:
    sol = nbformat.read(solution, as_version=4)
    ex = nbformat.read(make_exercises.exercise_path(solution), as_version=4)
    assert len(sol.cells) == len(ex.cells)
    n_solution_cells = 0
    for s_cell, e_cell in zip(sol.cells, ex.cells):
        meta = nbgrader_meta(s_cell)
        assert meta == nbgrader_meta(e_cell)
        if meta:
            assert meta["schema_version"] == 3 and meta["grade_id"]
        if meta.get("solution"):
            n_solution_cells += 1
            assert not meta["grade"] and not meta["locked"]
            for region in solution_regions(e_cell.source):
                assert len(region) == 1 and "raise NotImplementedError(" in region[0]
            leaked = [line for region in solution_regions(s_cell.source) for line in region
                      if line.strip() and not line.strip().startswith("#")
                      and line in e_cell.source.splitlines()]
            assert not leaked, f"solution code left in the exercise: {leaked}"
            assert not e_cell.outputs and e_cell.execution_count is None
        if meta.get("grade"):
            assert meta["locked"] and meta["points"] > 0
            assert RAISES_TAG in e_cell.metadata.get("tags", [])
            assert RAISES_TAG not in s_cell.metadata.get("tags", [])
            assert not e_cell.outputs and e_cell.execution_count is None
            assert s_cell.source == e_cell.source
    assert n_solution_cells >= 4
    exercise_md = [c.source for c in sol.cells
                   if c.cell_type == "markdown" and c.source.startswith("## Exercise")]
    assert len(exercise_md) == n_solution_cells
    for text in exercise_md:
        assert "**Objective:**" in text and "**Difficulty:**" in text and "**Time:**" in text
        assert re.search(r"\(([123]) of 3\)", text)
        assert 1 <= text.count("<details>") <= 2


# ----------------------------------------------------------------- learner self-check

def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glassbox.check", *args], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=900)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mixed_learner_notebook(tmp_path: Path) -> Path:
    """Chapter 02's exercises with one exercise right, two wrong, the rest untouched."""
    sol = nbformat.read(REPO_DIR / "solutions" / "02_anatomy.ipynb", as_version=4)
    nb = nbformat.read(REPO_DIR / "exercises" / "02_anatomy.ipynb", as_version=4)
    by_id = {nbgrader_meta(c).get("grade_id"): i for i, c in enumerate(nb.cells)}
    nb.cells[by_id["count_parameters"]].source = \
        sol.cells[by_id["count_parameters"]].source
    nb.cells[by_id["conv1d_to_linear"]].source = (
        "def conv1d_to_linear(conv):\n"
        "    linear = nn.Linear(*conv.weight.shape)\n"
        "    linear.weight = nn.Parameter(conv.weight.detach().clone())\n"
        "    linear.bias = nn.Parameter(conv.bias.detach().clone())\n"
        "    return linear\n")
    nb.cells[by_id["split_qkv"]].source = (
        "def split_qkv(c_attn, x, n_head):\n"
        "    return c_attn(x).split(x.shape[-1], dim=2)\n")
    learner = tmp_path / "my_02_anatomy.ipynb"
    nbformat.write(nb, learner)
    return learner


def make_exercises_in(path: Path) -> list:
    """The exercises ``make check`` finds in a notebook."""
    from glassbox.check import find_exercises

    return find_exercises(nbformat.read(path, as_version=4))


MARKS = re.compile(r"^E?\s*([✓✗·]) (.+): (passed|failed|not attempted)\s*$", re.MULTILINE)


@pytest.mark.notebook
def test_self_check_reports_each_exercise(tmp_path: Path) -> None:
    """make check on a learner notebook with one exercise right, two wrong, the rest untouched;
    then the test suite's one-run path on the same notebook gives the same verdicts."""
    learner = mixed_learner_notebook(tmp_path)
    before = digest(learner)
    result = run_check(str(learner))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "✓ Exercise 1" in out and "Exercise 1: count the parameters from the config: passed" in out
    assert "✗ Exercise 2" in out and "transpose" in out and "Hint:" in out
    assert "✗ Exercise 3" in out and re.search(r"split_qkv\b.* raised IndexError", out)
    assert "· Exercise 4" in out and "not attempted" in out
    n_exercises = len(make_exercises_in(learner))
    untouched = n_exercises - 3
    assert f"1 passed, 2 failed, {untouched} not attempted" in out
    assert digest(learner) == before

    # The same notebook through the suite's path: nbval with the tags kept, verdicts derived.
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", str(learner), "-p", "tests.notebook_plugin",
         "-c", str(REPO_DIR / "pyproject.toml"), "--rootdir", str(tmp_path), "-q", "-rN"],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")})
    # -rN and no CI variable: each verdict is printed once, in the failure's report (with CI
    # set, pytest repeats the whole message in its short summary).
    assert suite.returncode == 1, suite.stdout + suite.stderr  # the verdict item fails: not all passed
    assert "make-check-says-all-passed" in suite.stdout
    verdicts = sorted(MARKS.findall(out))
    assert len(verdicts) == n_exercises and untouched >= 2, out
    assert sorted(MARKS.findall(suite.stdout)) == verdicts, suite.stdout
    assert f"1 passed, 2 failed, {untouched} not attempted" in suite.stdout
    assert digest(learner) == before


def test_self_check_bad_paths(tmp_path: Path, capsys) -> None:
    from glassbox.check import check_notebook

    assert check_notebook(tmp_path / "missing.ipynb") == 2
    assert "No such file" in capsys.readouterr().out
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    assert check_notebook(text_file) == 2
    assert "not a notebook" in capsys.readouterr().out
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    assert check_notebook(broken) == 2
    assert "could not be read" in capsys.readouterr().out
    lesson = REPO_DIR / "notebooks" / "02_anatomy.ipynb"
    assert check_notebook(lesson) == 2
    assert "has no exercises" in capsys.readouterr().out
