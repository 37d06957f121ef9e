"""Install the course inside Google Colab; called by the Colab set-up cell of every notebook.

The set-up cell (stamped by ``scripts/stamp_colab.py``) clones the course at its pinned
branch, puts the clone on ``sys.path`` and calls :func:`install_course`, which

* installs the ``glassbox`` package from the clone (``pip install --no-deps -e``): its data
  and TinyGPT's weights come with the clone;
* installs, at the versions pinned in ``requirements.txt``, the packages the notebooks need
  and Colab lacks or has at another version (transformers, tokenizers, openai, ...);
* keeps Colab's own build of the packages in :data:`KEEP_COLABS_OWN` (torch with its CUDA
  build, numpy, matplotlib, ipywidgets, ...): they are already imported by Colab's kernel
  or built for it, so replacing them would force a restart or break Colab. A constraints
  file holds them at Colab's versions, so no dependency can replace them either; the
  pinned version is installed only if one of them is missing;
* skips :data:`NOT_NEEDED_IN_COLAB`: the tools for running JupyterLab and for maintaining
  the course (tests, nbgrader, the rendered book), which Colab does not need.

Only the standard library is used: this runs before anything else is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: Colab's own versions are used when present (pinned version installed only if missing).
KEEP_COLABS_OWN: frozenset[str] = frozenset({"torch", "numpy", "matplotlib", "ipywidgets", "tqdm", "psutil"})

#: Never installed in Colab: JupyterLab and the kernel (Colab has its own) and the maintainers' tools.
NOT_NEEDED_IN_COLAB: frozenset[str] = frozenset({
    "jupyterlab", "ipykernel", "nbformat", "nbclient", "nbconvert", "nbval", "nbgrader", "pytest",
    "hypothesis", "schemathesis", "playwright", "jupyter-book",
})

MARKER = ".colab-installed"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements: Path) -> dict[str, str]:
    """``{name: version}`` for every exact pin in a requirements file."""
    pins: dict[str, str] = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.split("#", 1)[0])
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(pins: dict[str, str], installed: dict[str, str | None]) -> tuple[list[str], list[str], dict[str, str]]:
    """Decide what to install. Returns ``(requirements to install, constraints, kept versions)``.

    ``installed`` maps each pinned name to its installed version (None if missing).
    A local build label (``2.13.0+cpu``) meets the pin ``2.13.0``, as it does for pip.
    """
    to_install: list[str] = []
    constraints: list[str] = []
    kept: dict[str, str] = {}
    for name, pinned in pins.items():
        have = installed.get(name)
        if name in NOT_NEEDED_IN_COLAB:
            continue
        if name in KEEP_COLABS_OWN and have is not None:
            constraints.append(f"{name}=={have}")
            kept[name] = have
            continue
        if have is not None and have.split("+")[0] == pinned:
            continue
        to_install.append(f"{name}=={pinned}")
    return to_install, constraints, kept


def _pip(*args: str) -> None:
    """Run pip quietly; on failure show its output and stop with a clear message."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
        raise RuntimeError(f"Colab set-up: `pip install {' '.join(args)}` failed (its output is above). "
                           "Run the cell again; if it fails again, use Runtime > Disconnect and delete runtime.")


def install_course(course_dir: str | Path) -> None:
    """Install the course from the clone in ``course_dir`` (see the module docstring); prints one summary."""
    course_dir = Path(course_dir)
    marker = course_dir / MARKER
    if marker.is_file():
        print(f"Colab set-up: the course is already installed from {course_dir} ({marker.read_text().strip()}).")
        return
    if not (course_dir / "requirements.txt").is_file() or not (course_dir / "glassbox").is_dir():
        raise RuntimeError(f"Colab set-up: {course_dir} is not a complete copy of the course (an interrupted "
                           f"download?). Delete it with `!rm -rf {course_dir}` and run this cell again.")
    pins = read_pins(course_dir / "requirements.txt")
    to_install, constraints, kept = plan(pins, {name: installed_version(name) for name in pins})
    _pip("--no-deps", "-e", str(course_dir))
    if to_install:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write("\n".join(constraints) + "\n")
        _pip("-c", handle.name, *to_install)
    importlib.invalidate_caches()
    summary = (f"installed glassbox and {len(to_install)} pinned packages"
               + (f" ({', '.join(to_install)})" if to_install else "")
               + "; kept Colab's " + (", ".join(f"{n} {v}" for n, v in sorted(kept.items())) or "nothing"))
    marker.write_text(summary + "\n", encoding="utf-8")
    print(f"Colab set-up: {summary}.")
