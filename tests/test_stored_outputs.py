"""Stored outputs are what a learner reads first (GitHub, Colab's preview, the book): they must read
well on their own and show nothing of the machine that recorded them.

These checks read the stored outputs themselves. They do not rely on tests/nbval_sanitize.cfg,
which only makes nbval's comparison tolerant; a path or port it hides is still on the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from glassbox.paths import REPO_DIR

NOTEBOOKS = sorted(path for folder in ("notebooks", "solutions", "exercises")
                   for path in (REPO_DIR / folder).glob("[0-9][0-9]_*.ipynb"))
MACHINE_PATH = re.compile(r"(?<![\w.])/(tmp|root|home|var/folders|private/var)/[^\s'\"\\]*")
EPHEMERAL_PORT = re.compile(r"(127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):\d{2,5}")
API_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
WIDGET = "application/vnd.jupyter.widget-view+json"


def rel(path: Path) -> str:
    return path.relative_to(REPO_DIR).as_posix()


def code_cells(path: Path) -> list[tuple[int, dict]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(index, cell) for index, cell in enumerate(cells, start=1) if cell["cell_type"] == "code"]


def output_text(cell: dict) -> str:
    """Everything a reader can see of a cell's outputs, images left out."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for mime, value in out.get("data", {}).items():
            if not mime.startswith("image/"):
                parts.append(value if isinstance(value, str) else json.dumps(value))
        parts.append(" ".join(out.get("traceback", [])))
    return "\n".join(parts)


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 28


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_no_machine_path_port_or_key_in_stored_outputs(path: Path) -> None:
    found = []
    for index, cell in code_cells(path):
        text = output_text(cell)
        for pattern, what in [(MACHINE_PATH, "a machine path"), (EPHEMERAL_PORT, "an address with a port"),
                              (API_KEY, "something shaped like an API key")]:
            match = pattern.search(text)
            if match:
                found.append(f"cell {index}: {what}, {match.group(0)!r}")
    assert not found, (f"{rel(path)} stores what only the recording machine had; print paths relative "
                       "to their folder and ports as a placeholder:\n  " + "\n  ".join(found))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_no_stored_error_outside_cells_tagged_raises_exception(path: Path) -> None:
    found = [f"cell {index}: {out.get('ename')}" for index, cell in code_cells(path)
             for out in cell.get("outputs", []) if out.get("output_type") == "error"
             and "raises-exception" not in cell.get("metadata", {}).get("tags", [])]
    assert not found, f"{rel(path)} stores errors a reader would take for a broken course: {found}"


def lonely_widgets(cells: list[tuple[int, dict]]) -> list[int]:
    """The cells that show a widget with no stored figure in their own or an adjacent code cell."""
    has_figure = [any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
                  for _, cell in cells]
    return [index for position, (index, cell) in enumerate(cells)
            if any(WIDGET in out.get("data", {}) for out in cell.get("outputs", []))
            and not any(has_figure[max(position - 1, 0):position + 2])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_every_widget_has_a_static_figure_beside_it(path: Path) -> None:
    """A widget is only `interactive(children=...)` text where no kernel runs (GitHub, Colab's
    preview, the book): its own cell or the code cell next to it must store a figure."""
    lonely = lonely_widgets(code_cells(path))
    assert not lonely, f"{rel(path)}: widgets without a static figure beside them in cells {lonely}"


def test_the_checks_can_fail() -> None:
    """Each pattern finds what it names, and leaves alone what a lesson may print."""
    assert MACHINE_PATH.search("saved to /tmp/glassbox-x1/model")
    assert MACHINE_PATH.search("'/root/.cache/huggingface'")
    assert not MACHINE_PATH.search("saved to build/model and data/licences.csv")
    assert not MACHINE_PATH.search("https://example.org/tmp/x")
    assert EPHEMERAL_PORT.search("base_url=http://127.0.0.1:41234/v1")
    assert not EPHEMERAL_PORT.search("base_url=http://127.0.0.1:PORT/v1")
    assert API_KEY.search("api_key='sk-proj-abcdefghijklmnop1234'")
    assert not API_KEY.search("api_key='made-up-key-for-this-demo'")
    figure = {"outputs": [{"output_type": "display_data", "data": {"image/png": "x", "text/plain": "<Figure>"}}]}
    widget = {"outputs": [{"output_type": "display_data", "data": {WIDGET: {}, "text/plain": "interactive()"}}]}
    text = {"outputs": [{"output_type": "stream", "name": "stdout", "text": "hello"}]}
    assert output_text(figure).strip() == "<Figure>"
    assert lonely_widgets([(1, text), (2, widget), (3, text)]) == [2]
    assert lonely_widgets([(1, text), (2, widget), (3, figure)]) == []
    assert lonely_widgets([(1, figure), (2, widget)]) == []
    assert lonely_widgets([(1, figure), (2, text), (3, widget)]) == [3]
