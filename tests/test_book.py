"""The rendered course (`make book`): every chapter has a page, in chapter order, from stored outputs, offline.

One build into a temporary folder (scripts/build_book.py, Jupyter Book 1.x), then:
- every lesson (notebooks/*.ipynb) has a page, and so has every exercise notebook;
- the landing page links every chapter, in chapter order, and the navigation lists each
  lesson followed by its exercises;
- the pages show the outputs stored in the notebooks (nothing is executed);
- the build needs no network: it runs with the network cut (`unshare -n`, when this runs as
  root with util-linux, as in CI), otherwise with every HTTP(S) proxy pointed at a closed port.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from glassbox.paths import REPO_DIR


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_DIR / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = load_script("build_book")
LESSONS = sorted((REPO_DIR / "notebooks").glob("*.ipynb"))
EXERCISES = sorted((REPO_DIR / "exercises").glob("*.ipynb"))


def offline_command(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command run with no network, and the environment for it."""
    env = dict(os.environ)
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command], env
    dead = "http://127.0.0.1:9"  # the discard port: nothing answers there
    env.update({"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                "no_proxy": "", "NO_PROXY": ""})
    return command, env


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book") / "html"
    command, env = offline_command([sys.executable, str(REPO_DIR / "scripts" / "build_book.py"), "--out", str(out)])
    result = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def main_content(page: str) -> str:
    return page[page.index("<main"):page.index("</main>")]


def test_there_are_lessons() -> None:
    assert LESSONS, "no notebooks/*.ipynb"


def test_toc_is_every_lesson_with_its_exercises_in_order() -> None:
    toc = build_book.table_of_contents()
    assert toc["root"] == "intro"
    assert [entry["file"] for entry in toc["chapters"]] == [f"notebooks/{p.stem}" for p in LESSONS]
    for entry in toc["chapters"]:
        name = entry["file"].split("/")[1]
        expected = [{"file": f"exercises/{name}"}] if (REPO_DIR / "exercises" / f"{name}.ipynb").exists() else None
        assert entry.get("sections") == expected
    assert {f"exercises/{p.stem}" for p in EXERCISES} <= {
        section["file"] for entry in toc["chapters"] for section in entry.get("sections", [])}, (
        "an exercise notebook has no lesson of the same name, so the book would leave it out")


def test_every_chapter_and_exercise_has_a_page(book: Path) -> None:
    for notebook in LESSONS + EXERCISES:
        page = book / notebook.parent.name / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.parent.name}/{notebook.name}"
        title = nbformat.read(notebook, as_version=4).cells[0].source.splitlines()[0].lstrip("# ").strip()
        assert html.escape(title, quote=False) in page_text(page), f"{page.name} does not show the title {title!r}"


def test_landing_page_links_every_chapter_in_order(book: Path) -> None:
    assert 'url=intro.html' in page_text(book / "index.html"), "index.html should open the landing page"
    landing = page_text(book / "intro.html")
    links = re.findall(r'href="(notebooks/[^"#]+\.html)"', main_content(landing))
    expected = [f"notebooks/{p.stem}.html" for p in LESSONS]
    firsts = list(dict.fromkeys(links))  # first appearance of each, in order
    assert firsts == expected, f"the landing page links {firsts}, expected {expected}"
    nav = landing[landing.index("bd-docs-nav"):]
    nav_links = list(dict.fromkeys(re.findall(r'href="((?:notebooks|exercises)/[^"#]+\.html)"', nav)))
    order = []
    for lesson in LESSONS:
        order.append(f"notebooks/{lesson.stem}.html")
        if (REPO_DIR / "exercises" / lesson.name).exists():
            order.append(f"exercises/{lesson.stem}.html")
    assert nav_links == order


def test_pages_show_the_stored_outputs(book: Path) -> None:
    checked = 0
    for notebook in LESSONS:
        nb = nbformat.read(notebook, as_version=4)
        lines = [line.strip() for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                 if out.output_type == "stream" and out.name == "stdout" for line in out.text.splitlines()
                 if len(line.strip()) > 20]
        if not lines:
            continue
        page = page_text(book / "notebooks" / f"{notebook.stem}.html")
        assert html.escape(lines[0], quote=False) in page or html.escape(lines[0]) in page, (
            f"{notebook.name}: its stored output {lines[0]!r} is not on its page")
        checked += 1
    assert checked, "no lesson has stored printed output to look for: run `make outputs`"


def test_the_colab_set_up_cell_is_not_on_the_pages(book: Path) -> None:
    for notebook in LESSONS + EXERCISES:
        page = page_text(book / notebook.parent.name / f"{notebook.stem}.html")
        assert "Colab set-up (runs only in Google Colab" not in page
