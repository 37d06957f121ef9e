"""Stamp every notebook with its "Open in Colab" badge and the Colab set-up cell (``make colab``).

    python scripts/stamp_colab.py                  # stamp notebooks/, solutions/ and exercises/
    python scripts/stamp_colab.py --check          # write nothing; exit 1 if any notebook is not up to date
    python scripts/stamp_colab.py notebooks/02_anatomy.ipynb

Every ``*.ipynb`` in the three folders is stamped, whatever chapters exist. The badge
links to the notebook's own path; badge and cell come from the one setting in
``glassbox/course_url.py`` (see ``glassbox/colab_stamp.py`` for where they go). A notebook
already up to date is not rewritten, so running this twice changes nothing. Stamping
solutions/ and then running scripts/make_exercises.py gives the same exercises/ as
generating first and stamping afterwards: the generator re-points the badge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from glassbox.colab_stamp import stamp

REPO_DIR = Path(__file__).resolve().parent.parent
FOLDERS = ("notebooks", "solutions", "exercises")


def course_notebooks(root: Path = REPO_DIR) -> list[Path]:
    """Every notebook to stamp, folder by folder, in file-name (chapter) order."""
    return [path for folder in FOLDERS for path in sorted((root / folder).glob("*.ipynb"))]


def repo_path(path: Path, root: Path = REPO_DIR) -> str:
    """A notebook's path inside the repository, as Colab's URL needs it (``notebooks/02_anatomy.ipynb``)."""
    return path.resolve().relative_to(root.resolve()).as_posix()


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text written to disk (nbformat's layout with a trailing newline, as make_exercises.py writes)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def stamped_text(path: Path, root: Path = REPO_DIR) -> str:
    """The text of ``path`` once stamped."""
    return render(stamp(nbformat.read(path, as_version=4), repo_path(path, root)))


def main(argv: list[str] | None = None, root: Path = REPO_DIR) -> int:
    parser = argparse.ArgumentParser(description="Stamp the Colab badge and set-up cell into every notebook.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook needs stamping")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to stamp (default: notebooks/, solutions/ and exercises/)")
    args = parser.parse_args(argv)
    paths = [path.resolve() for path in args.notebooks] or course_notebooks(root)
    stale = []
    for path in paths:
        shown = repo_path(path, root)
        text = stamped_text(path, root)
        if path.read_text(encoding="utf-8") == text:
            continue
        stale.append(shown)
        if args.check:
            print(f"{shown} is not stamped (or its stamp is out of date): run `make colab`", file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"stamped {shown}")
    if not stale:
        print(f"{len(paths)} notebooks carry an up-to-date Colab stamp.")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
