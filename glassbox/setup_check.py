"""Check that this computer is ready for the course, and say how to fix what is not.

Run it from a terminal in the course folder::

    python -m glassbox.setup_check

or open ``notebooks/00_setup_check.ipynb``, which calls the same functions one at a time.
Every check prints ``[OK]`` or ``[FAIL]`` (or ``[OFFLINE]`` for the Hub, which is fine).

Only the standard library is imported at the top, so the package check still runs
when a pinned package is missing or broken. Paths are printed relative to the course
folder, or with ``~`` for the home folder, so no machine-specific path is shown.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from glassbox.paths import DATA_DIR, REPO_DIR, TINYGPT_DIR, TINYGPT_WEIGHTS_DIR

#: Python versions the course supports (pyproject.toml says the same: requires-python >= 3.10).
MIN_PYTHON: tuple[int, int] = (3, 10)

_TRUE_VALUES = {"1", "true", "yes", "on"}
_EXACT_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*(;.*)?$")


@dataclass(frozen=True)
class PackageCheck:
    """One package compared with its pin. ``installed`` is None when it is not installed."""

    name: str
    pinned: str
    installed: str | None
    colabs_own: bool = False

    @property
    def ok(self) -> bool:
        """True when the installed version is the pinned one (or, in Colab, Colab's own build).

        A local build label after ``+`` is ignored unless the pin names one, as pip does:
        the pin ``torch==2.13.0`` is met by ``2.13.0+cpu``.
        """
        if self.installed is None:
            return False
        if self.colabs_own:
            return True
        if "+" in self.pinned:
            return self.installed == self.pinned
        return self.installed.split("+")[0] == self.pinned

    def line(self) -> str:
        """One line of the report, e.g. ``[OK]   torch 2.13.0``."""
        if self.ok and self.colabs_own:
            return f"[OK]   {self.name} {self.installed} (Colab's own build, kept on purpose; the course pins {self.pinned})"
        if self.ok:
            return f"[OK]   {self.name} {self.pinned}"
        if self.installed is None:
            return f"[FAIL] {self.name}: pinned {self.pinned}, not installed"
        return f"[FAIL] {self.name}: pinned {self.pinned}, installed {self.installed}"


def display_path(path: str | Path) -> str:
    """Show a path relative to the course folder, or with ``~`` for the home folder.

    Stored notebook outputs then hold no machine-specific paths such as ``/home/me/...``.
    Any other path is shown as it is.
    """
    path = Path(path).expanduser().absolute()
    try:
        relative = path.relative_to(REPO_DIR)
        return str(relative) if str(relative) != "." else "."
    except ValueError:
        pass
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except (ValueError, RuntimeError):  # RuntimeError: no home folder can be found
        return str(path)


def parse_pins(requirements: list[str]) -> dict[str, str]:
    """Turn requirement strings such as ``"torch==2.13.0"`` into ``{"torch": "2.13.0"}``.

    Comments, blank lines, extras-only requirements and anything that is not an exact
    ``==`` pin are skipped: the course pins every dependency exactly.
    """
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = _EXACT_PIN.match(requirement.split("#")[0])
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker and "extra" in marker:
            continue
        pins[name] = version
    return pins


def pinned_versions() -> dict[str, str]:
    """The course's exact pins, as the installed ``glassbox`` package declares them.

    They come from requirements.txt (pyproject.toml reads them from there). If the
    package is not installed, for example when the folder was only downloaded, the
    file is read directly.
    """
    try:
        requirements = importlib.metadata.requires("glassbox") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = (REPO_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return parse_pins(requirements)


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None if it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules


def check_packages(pins: Mapping[str, str] | None = None) -> list[PackageCheck]:
    """Compare every pinned package with the installed one (``pins`` defaults to the course's).

    In Colab the set-up cell (``glassbox.colab_setup``) keeps Colab's own torch, numpy and a
    few others, and skips the maintainers' tools, so those are checked the same way here.
    """
    kept: frozenset[str] = frozenset()
    if pins is None:
        pins = pinned_versions()
        if in_colab():
            from glassbox.colab_setup import KEEP_COLABS_OWN, NOT_NEEDED_IN_COLAB

            pins = {name: version for name, version in pins.items() if name not in NOT_NEEDED_IN_COLAB}
            kept = KEEP_COLABS_OWN
    return [PackageCheck(name, version, installed_version(name), colabs_own=name in kept)
            for name, version in pins.items()]


def fix_packages_advice() -> str:
    """What a learner should do when a package does not match its pin."""
    python = display_path(sys.executable)
    return (
        "How to fix it: in a terminal, from the course folder, run\n"
        f"    {python} -m pip install -r requirements.txt\n"
        "which reinstalls the pinned versions into the Python this notebook runs on.\n"
        "Then restart the kernel (Kernel > Restart Kernel) and run this check again.\n"
        "Setting up for the first time? Run `make lab` from the course folder instead: it makes\n"
        ".venv, installs the pinned versions into it and opens the course."
    )


def package_report(pins: Mapping[str, str] | None = None) -> str:
    """One ``[OK]``/``[FAIL]`` line per pinned package, then a verdict (and advice on failure)."""
    checks = check_packages(pins)
    lines = [check.line() for check in checks]
    failed = [check for check in checks if not check.ok]
    if not failed:
        lines.append(f"Every package matches its pinned version ({len(checks)} checked).")
    else:
        lines.append(f"{len(failed)} of {len(checks)} packages do not match the pinned versions.")
        lines.append(fix_packages_advice())
    return "\n".join(lines)


def python_report() -> str:
    """Which Python runs this code, and whether it is new enough."""
    version = ".".join(str(part) for part in sys.version_info[:3])
    where = display_path(sys.executable)
    if sys.version_info[:2] >= MIN_PYTHON:
        return f"[OK]   Python {version}, running from {where}"
    needed = ".".join(str(part) for part in MIN_PYTHON)
    return (
        f"[FAIL] Python {version}, running from {where}: the course needs Python {needed} or newer.\n"
        "How to fix it: install a newer Python, then run `make lab` from the course folder."
    )


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, so nothing may contact the Hugging Face Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def hub_report() -> str:
    """Whether the Hugging Face Hub can be reached (not asked at all when offline is set)."""
    fine = "That is fine: the course uses TinyGPT, which comes with the course and needs no network."
    if hub_offline():
        return (
            "[OFFLINE] Hugging Face Hub: not probed, because HF_HUB_OFFLINE=1 is set\n"
            "(the course's offline setting, used to record and check stored outputs).\n" + fine
        )
    from glassbox.loader import hub_reachable

    reachable, why = hub_reachable()
    if reachable:
        return f"[OK]   Hugging Face Hub: reachable ({why}). The real GPT-2 can be downloaded."
    return f"[OFFLINE] Hugging Face Hub: not reachable ({why}).\n" + fine


def model_report() -> str:
    """Which model ``load_model()`` will load, and why, without loading it."""
    from glassbox.loader import MODEL_NAMES, choose_model

    name, reason = choose_model()
    description = MODEL_NAMES.get(name, "a model folder or a name the course does not know")
    lines = [f"Model: {name}", f"What it is: {description}", f"Why this one: {reason}."]
    if name == "tinygpt" and not (TINYGPT_WEIGHTS_DIR / "model.safetensors").is_file():
        lines.append(
            f"[FAIL] TinyGPT's weights are missing from {display_path(TINYGPT_WEIGHTS_DIR)}.\n"
            "How to fix it: restore them with `git checkout -- glassbox/tinygpt/weights`, "
            "or retrain them with `make tinygpt` (about 15 minutes)."
        )
    lines.append("To choose another model, set GLASSBOX_MODEL (e.g. GLASSBOX_MODEL=gpt2) before starting Jupyter.")
    return "\n".join(lines)


def hf_cache_dir() -> Path:
    """Where the Hugging Face libraries keep downloaded models (honours HF_HOME and HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def paths_report() -> str:
    """Where the course keeps its data, TinyGPT and downloaded models."""

    def state(path: Path, missing: str) -> str:
        return "found" if path.exists() else missing

    weights = TINYGPT_WEIGHTS_DIR / "model.safetensors"
    cache = hf_cache_dir()
    rows = [
        ("Course data", DATA_DIR, state(DATA_DIR, "MISSING: restore it with `git checkout -- data`")),
        ("TinyGPT", TINYGPT_DIR, "weights " + state(weights, "MISSING: run `make tinygpt`")),
        ("Hugging Face cache", cache, state(cache, "not created yet; it is made on the first download")),
    ]
    return "\n".join(f"{label + ':':<20} {display_path(path) + '/':<28} ({note})" for label, path, note in rows)


def main() -> int:
    """Print every check; return 1 if any check says [FAIL], else 0."""
    print("Glass Box set-up check\n")
    sections = [("Python", python_report), ("Packages", package_report), ("Hugging Face Hub", hub_report)]
    sections += [("Model", model_report), ("Where things live", paths_report)]
    text = ""
    for title, report in sections:
        section = report()
        text += section
        print(f"== {title} ==\n{section}\n")
    return 1 if "[FAIL]" in text else 0


if __name__ == "__main__":
    sys.exit(main())
