"""Stamp a notebook for Colab: an "Open in Colab" badge and the Colab set-up cell.

Used by ``scripts/stamp_colab.py`` (``make colab``) and by ``scripts/make_exercises.py``,
which re-points the badge of a generated exercise notebook at the exercise file. Both
parts are built from the one setting in ``glassbox/course_url.py``.

* The badge goes into the first markdown cell, on its own line after the title line
  (``# NN · Title``), and links to the notebook's own path in the repository.
* The set-up cell (id ``colab-setup``) is the first code cell, right after the title cell.
  In Colab it fetches the course at the pinned branch and runs
  ``glassbox.colab_setup.install_course``; anywhere else it does nothing and prints nothing,
  so nbval, nbgrader and ``make check`` see an empty cell. It has no nbgrader metadata,
  so the exercise generator copies it unchanged.

Stamping is idempotent: an up-to-date notebook is returned unchanged, and an older stamp
(another URL, branch or path) is replaced, never duplicated. The set-up cell keeps its
execution count, so stamping a notebook with recorded outputs changes nothing.
"""

from __future__ import annotations

import copy
import json
import re

import nbformat

from glassbox import course_url

SETUP_CELL_ID = "colab-setup"
#: Where the course is fetched to inside Colab (its working folder is /content).
COLAB_COURSE_DIR = "/content/glassbox-course"
#: Marks the stamped set-up cell (Colab shows a form with the #@title instead of the code).
SETUP_METADATA = {"cellView": "form", "glassbox": {"stamp": SETUP_CELL_ID}}

_BADGE_LINE = re.compile(
    r"^\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\(https://colab\.research\.google\.com/github/[^)\s]+\)[ \t]*$"
)

SETUP_TEMPLATE = '''\
#@title Colab set-up (runs only in Google Colab; anywhere else it does nothing)
# In Colab this fetches the course at its pinned branch and installs the glassbox package and
# the packages it pins, keeping Colab's own torch. In JupyterLab, Binder or JupyterHub it does nothing.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    course_dir = {target}
    if not os.path.isdir(course_dir):
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", {branch},
                        {repository}, course_dir], check=True)
    sys.path.insert(0, course_dir)
    from glassbox.colab_setup import install_course

    install_course(course_dir)'''


def setup_source(repository: str = course_url.REPOSITORY, branch: str = course_url.BRANCH,
                 target: str = COLAB_COURSE_DIR) -> str:
    """The source of the Colab set-up cell (``repository`` may be any git URL; tests use a local one)."""
    return SETUP_TEMPLATE.format(repository=json.dumps(repository), branch=json.dumps(branch),
                                 target=json.dumps(target))


def is_setup_cell(cell: nbformat.NotebookNode) -> bool:
    """True for a Colab set-up cell stamped by this module (whatever URL it holds)."""
    return cell.get("cell_type") == "code" and (
        cell.get("metadata", {}).get("glassbox", {}).get("stamp") == SETUP_CELL_ID
        or cell.get("id") == SETUP_CELL_ID
    )


def badge_lines(source: str) -> list[str]:
    """Every "Open in Colab" badge line of a markdown cell's source."""
    return [line for line in source.split("\n") if _BADGE_LINE.match(line)]


def is_stamped(nb: nbformat.NotebookNode) -> bool:
    """True if the notebook carries a Colab badge or a Colab set-up cell (up to date or not)."""
    return any(is_setup_cell(cell) for cell in nb.cells) or any(
        cell.cell_type == "markdown" and badge_lines(cell.source) for cell in nb.cells
    )


def _without_badge(source: str) -> str:
    """A markdown source with its badge lines removed, with the blank line each one brought."""
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _BADGE_LINE.match(lines[i]):
            i += 1
            if i < len(lines) and not lines[i].strip() and out and not out[-1].strip():
                i += 1  # the blank line that separated the badge from the next paragraph
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _with_badge(source: str, badge: str) -> str:
    """Put ``badge`` on its own line after the title line (or first, if the cell has no title)."""
    lines = _without_badge(source).split("\n")
    if lines and lines[0].startswith("#"):
        rest = lines[1:]
        while rest and not rest[0].strip():
            rest = rest[1:]
        return "\n".join([lines[0], "", badge] + ([""] + rest if rest else []))
    return "\n".join([badge, ""] + lines) if source.strip() else badge


def stamp(nb: nbformat.NotebookNode, path: str, repository: str = course_url.REPOSITORY,
          branch: str = course_url.BRANCH) -> nbformat.NotebookNode:
    """Return a copy of ``nb`` with the badge for ``path`` and the set-up cell (the input is not modified).

    ``path`` is the notebook's path relative to the repository root, with forward slashes,
    e.g. ``"exercises/02_anatomy.ipynb"``.
    """
    nb = copy.deepcopy(nb)
    badge = course_url.colab_badge(path, repository, branch)
    old_setup = next((cell for cell in nb.cells if is_setup_cell(cell)), None)
    cells = [cell for cell in nb.cells if not is_setup_cell(cell)]
    for cell in cells:  # a badge left anywhere else by an older stamp goes
        if cell.cell_type == "markdown" and badge_lines(cell.source):
            cell.source = _without_badge(cell.source)
    first_md = next((i for i, cell in enumerate(cells) if cell.cell_type == "markdown"), None)
    if first_md is None:
        cells.insert(0, nbformat.v4.new_markdown_cell(badge))
        first_md = 0
    else:
        cells[first_md].source = _with_badge(cells[first_md].source, badge)

    setup = nbformat.v4.new_code_cell(setup_source(repository, branch))
    setup.metadata = copy.deepcopy(SETUP_METADATA)
    if old_setup is not None and old_setup.source == setup.source:
        setup.execution_count = old_setup.get("execution_count")
        setup.outputs = old_setup.get("outputs", [])
    if nb.get("nbformat", 4) == 4 and nb.get("nbformat_minor", 0) >= 5:
        setup.id = SETUP_CELL_ID  # a fixed id: stamping twice, or in another process, gives the same file
    else:
        setup.pop("id", None)
    first_code = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    cells.insert(min(first_md + 1, first_code), setup)
    nb.cells = cells
    return nb


def restamp_if_stamped(nb: nbformat.NotebookNode, path: str) -> nbformat.NotebookNode:
    """Stamp ``nb`` for ``path`` if it already carries a stamp; otherwise return it unchanged.

    The exercise generator uses this: a stamped solutions notebook gives an exercise
    notebook whose badge points at the exercise, exactly as stamping it afterwards would.
    """
    return stamp(nb, path) if is_stamped(nb) else nb
