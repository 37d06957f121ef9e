"""Build the rendered course, a static website, from the notebooks' stored outputs (``make book``).

    python scripts/build_book.py                 # into build/book/ (open build/book/index.html)
    python scripts/build_book.py --out DIR
    python scripts/build_book.py --print-toc     # show the generated table of contents and stop

Jupyter Book 1.x turns every lesson (``notebooks/NN_topic.ipynb``) into a chapter page and
its exercises (``exercises/NN_topic.ipynb``, if any) into a page under it, after the landing
page ``book/intro.md``. Nothing is executed (``execute_notebooks: "off"`` in
``book/_config.yml``): the pages show the outputs ``make outputs`` stored, so the build is
fast and needs no network. The table of contents is generated from the notebooks present,
in chapter (file-name) order, so a new chapter appears without editing anything.

The build runs in a staging folder that holds copies; the course's files are never changed.
In those copies the Colab set-up cell is tagged ``remove-cell`` (it is plumbing, and the
page's launch buttons open the notebook with it). The repository URL and branch behind the
launch buttons and the landing page's badges come from ``glassbox/course_url.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

from glassbox import course_url
from glassbox.colab_stamp import is_setup_cell

REPO_DIR = Path(__file__).resolve().parent.parent
BOOK_DIR = REPO_DIR / "book"
DEFAULT_OUT = REPO_DIR / "build" / "book"


class BookError(RuntimeError):
    """The book could not be built; the message says why."""


def chapters(root: Path = REPO_DIR) -> list[tuple[Path, Path | None]]:
    """Each lesson with its exercise notebook (or None), in chapter order."""
    return [(lesson, (root / "exercises" / lesson.name) if (root / "exercises" / lesson.name).is_file() else None)
            for lesson in sorted((root / "notebooks").glob("*.ipynb"))]


def table_of_contents(root: Path = REPO_DIR) -> dict:
    """The _toc.yml content: the landing page, then one chapter per lesson with its exercises."""
    entries = []
    for lesson, exercise in chapters(root):
        entry: dict = {"file": f"notebooks/{lesson.stem}"}
        if exercise is not None:
            entry["sections"] = [{"file": f"exercises/{exercise.stem}"}]
        entries.append(entry)
    if not entries:
        raise BookError(f"no lesson notebooks in {root / 'notebooks'}: nothing to publish")
    return {"format": "jb-book", "root": "intro", "chapters": entries}


def book_config() -> dict:
    """book/_config.yml with the repository settings of glassbox/course_url.py filled in."""
    config = yaml.safe_load((BOOK_DIR / "_config.yml").read_text(encoding="utf-8"))
    config["repository"] = {"url": course_url.REPOSITORY, "branch": course_url.BRANCH, "path_to_book": ""}
    config.setdefault("parse", {})["myst_substitutions"] = {
        "colab_badge": course_url.colab_badge("notebooks/00_setup_check.ipynb"),
        "binder_badge": course_url.binder_badge("notebooks/00_setup_check.ipynb"),
    }
    return config


def _copy_notebook(source: Path, target: Path) -> None:
    """Copy a notebook for the book, hiding the Colab set-up cell on the page."""
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if is_setup_cell(cell):
            cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {"remove-cell"})
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


def stage(staging: Path, root: Path = REPO_DIR) -> None:
    """Fill ``staging`` with the book's sources: config, generated toc, landing page, notebook copies."""
    toc = table_of_contents(root)
    for page in BOOK_DIR.glob("*.md"):
        shutil.copy2(page, staging / page.name)
    (staging / "_config.yml").write_text(yaml.safe_dump(book_config(), sort_keys=False), encoding="utf-8")
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    for lesson, exercise in chapters(root):
        _copy_notebook(lesson, staging / "notebooks" / lesson.name)
        if exercise is not None:
            _copy_notebook(exercise, staging / "exercises" / exercise.name)


def build(out: Path, root: Path = REPO_DIR, quiet: bool = True) -> Path:
    """Build the book into ``out`` (replacing it); return the landing page's path."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    with tempfile.TemporaryDirectory(prefix="glassbox-book-") as tmp:
        staging = Path(tmp)
        stage(staging, root)
        command = [str(jupyter_book), "build", str(staging), "--path-output", str(staging),
                   "--builder", "html", "--keep-going"] + (["-q"] if quiet else [])
        result = subprocess.run(command, capture_output=True, text=True)
        html = staging / "_build" / "html"
        if result.returncode != 0 or not (html / "intro.html").is_file():
            raise BookError(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        if result.stderr.strip():
            print(result.stderr.strip(), file=sys.stderr)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(html, out)
        (out / "_toc.yml").write_text((staging / "_toc.yml").read_text(encoding="utf-8"), encoding="utf-8")
    return out / "intro.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the rendered course from the stored outputs.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the website goes (default: build/book)")
    parser.add_argument("--print-toc", action="store_true", help="print the generated _toc.yml and stop")
    args = parser.parse_args(argv)
    try:
        if args.print_toc:
            print(yaml.safe_dump(table_of_contents(), sort_keys=False), end="")
            return 0
        landing = build(args.out.resolve())
    except BookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    n = len(chapters())
    print(f"Built the course, {n} chapters, into {landing.parent}: open {landing.parent / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
