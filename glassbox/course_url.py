"""Where the course lives online: the ONE setting behind every link that leaves this machine.

The "Open in Colab" badges and the Colab set-up cell stamped into every notebook
(``scripts/stamp_colab.py``), the Binder links, the nbgitpuller links for a JupyterHub and
the launch buttons of the rendered course (``make book``) are all built from the two values
below. A teacher who forks the course edits these two lines, then runs ``make colab`` (it
re-stamps every notebook).

    python -m glassbox.course_url                                  # the README's badges
    python -m glassbox.course_url --hub https://hub.example.org    # an nbgitpuller link per notebook
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

#: The course's public GitHub repository (Colab opens notebooks straight from GitHub).
REPOSITORY: str = "https://github.com/glassbox-course/glassbox"

#: The branch (or tag) that badges, the Colab set-up and Binder use: the course's pinned version.
BRANCH: str = "main"

COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE_IMAGE = "https://mybinder.org/badge_logo.svg"
_GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")


def github_slug(repository: str = REPOSITORY) -> str:
    """``owner/name`` of a GitHub repository URL; a clear error for anything else."""
    match = _GITHUB.match(repository)
    if match is None:
        raise ValueError(
            f"REPOSITORY must be a GitHub URL such as https://github.com/owner/name (Colab and Binder "
            f"open notebooks from GitHub), not {repository!r}. Change it in glassbox/course_url.py."
        )
    return f"{match.group(1)}/{match.group(2)}"


def colab_url(path: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The Colab link that opens ``path`` (relative to the repository root, e.g. ``notebooks/02_anatomy.ipynb``)."""
    return f"https://colab.research.google.com/github/{github_slug(repository)}/blob/{quote(branch)}/{quote(path)}"


def binder_url(path: str | None = None, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The mybinder.org link that builds the course and opens ``path`` in JupyterLab (or the file browser)."""
    url = f"https://mybinder.org/v2/gh/{github_slug(repository)}/{quote(branch)}"
    return url + (f"?urlpath={quote('lab/tree/' + path, safe='')}" if path else "?urlpath=lab")


def colab_badge(path: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The Markdown "Open in Colab" badge for ``path``."""
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(path, repository, branch)})"


def binder_badge(path: str | None = None, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The Markdown "launch Binder" badge, opening ``path`` (or JupyterLab's file browser)."""
    return f"[![Binder]({BINDER_BADGE_IMAGE})]({binder_url(path, repository, branch)})"


def nbgitpuller_url(hub: str, path: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """A JupyterHub link that pulls the course into the learner's home and opens ``path`` in JupyterLab.

    nbgitpuller clones into a folder named after the repository, so the path opened is
    ``<repository name>/<path>``; pulling again later merges the teacher's updates without
    overwriting the learner's changes.
    """
    folder = github_slug(repository).split("/")[1] if _GITHUB.match(repository) else \
        repository.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    query = urlencode({"repo": repository, "branch": branch, "urlpath": f"lab/tree/{folder}/{path}"})
    return f"{hub.rstrip('/')}/hub/user-redirect/git-pull?{query}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the course's Colab/Binder badges or nbgitpuller links.")
    parser.add_argument("--hub", metavar="URL", help="a JupyterHub's address: print an nbgitpuller link per notebook")
    args = parser.parse_args(argv)
    if args.hub:
        root = Path(__file__).resolve().parent.parent
        for folder in ("notebooks", "exercises"):
            for notebook in sorted((root / folder).glob("*.ipynb")):
                print(f"{folder}/{notebook.name}  {nbgitpuller_url(args.hub, f'{folder}/{notebook.name}')}")
        return 0
    print(colab_badge("notebooks/00_setup_check.ipynb"), binder_badge("notebooks/00_setup_check.ipynb"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
