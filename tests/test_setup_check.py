"""The set-up check says OK for matching packages and FAIL, with advice, for the rest."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from glassbox import setup_check
from glassbox.paths import REPO_DIR

PYTEST_VERSION = importlib.metadata.version("pytest")
NO_SUCH_PACKAGE = "glassbox-no-such-package-xyz"


def test_matching_version_is_ok() -> None:
    report = setup_check.package_report({"pytest": PYTEST_VERSION})
    assert f"[OK]   pytest {PYTEST_VERSION}" in report
    assert "[FAIL]" not in report
    assert "pip install" not in report


def test_version_mismatch_is_fail_with_advice() -> None:
    report = setup_check.package_report({"pytest": "0.0.1", "psutil": importlib.metadata.version("psutil")})
    assert f"[FAIL] pytest: pinned 0.0.1, installed {PYTEST_VERSION}" in report
    assert "[OK]   psutil" in report
    assert "1 of 2 packages do not match" in report
    assert "-m pip install -r requirements.txt" in report
    assert "make lab" in report


def test_missing_package_is_fail_with_advice() -> None:
    report = setup_check.package_report({NO_SUCH_PACKAGE: "1.0"})
    assert f"[FAIL] {NO_SUCH_PACKAGE}: pinned 1.0, not installed" in report
    assert "-m pip install -r requirements.txt" in report


def test_local_build_label_is_ignored_unless_pinned() -> None:
    assert setup_check.PackageCheck("torch", "2.13.0", "2.13.0+cpu").ok
    assert not setup_check.PackageCheck("torch", "2.13.0+cpu", "2.13.0").ok
    assert not setup_check.PackageCheck("torch", "2.13.0", "2.13.1").ok


def test_parse_pins_keeps_exact_pins_only() -> None:
    lines = [
        "# a comment",
        "",
        "torch==2.13.0",
        "numpy == 2.4.6  # trailing comment",
        'tqdm==4.70.1; python_version >= "3.10"',
        'pytest==9.2.0; extra == "dev"',
        "requests>=2",
    ]
    assert setup_check.parse_pins(lines) == {"torch": "2.13.0", "numpy": "2.4.6", "tqdm": "4.70.1"}


def test_course_pins_are_requirements_txt() -> None:
    text = (REPO_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = setup_check.pinned_versions()
    assert pins == setup_check.parse_pins(text)
    assert pins["transformers"] == "5.23.0"


def test_hub_is_not_probed_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import glassbox.loader

    def must_not_be_called(*args: object, **kwargs: object) -> tuple[bool, str]:
        raise AssertionError("the Hub was probed although HF_HUB_OFFLINE=1")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(glassbox.loader, "hub_reachable", must_not_be_called)
    report = setup_check.hub_report()
    assert "not probed" in report and "HF_HUB_OFFLINE=1" in report
    assert "TinyGPT" in report


def test_unreachable_hub_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    import glassbox.loader

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(glassbox.loader, "hub_reachable", lambda *a, **k: (False, "no connection"))
    report = setup_check.hub_report()
    assert report.startswith("[OFFLINE]") and "that is fine" in report.lower()


def test_paths_are_shown_without_machine_paths() -> None:
    assert setup_check.display_path(REPO_DIR / "data") == "data"
    assert setup_check.display_path(Path.home() / ".cache" / "x") == str(Path("~") / ".cache" / "x")
    report = setup_check.paths_report()
    assert str(REPO_DIR) not in report
    assert str(Path.home()) + "/" not in report


def test_model_report_names_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_MODEL", "gpt2-untrained")
    report = setup_check.model_report()
    assert "Model: gpt2-untrained" in report
    assert "GLASSBOX_MODEL=gpt2-untrained" in report


def test_in_colab_the_kept_packages_and_missing_tools_are_not_failures(monkeypatch) -> None:
    import sys
    import types

    from glassbox import setup_check
    from glassbox.colab_setup import KEEP_COLABS_OWN, NOT_NEEDED_IN_COLAB

    pins = setup_check.pinned_versions()
    installed = {name: ("9.9.9+colab" if name in KEEP_COLABS_OWN else version) for name, version in pins.items()
                 if name not in NOT_NEEDED_IN_COLAB}
    monkeypatch.setattr(setup_check, "installed_version", installed.get)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    checks = setup_check.check_packages()
    assert all(check.ok for check in checks), [c.line() for c in checks if not c.ok]
    assert not {check.name for check in checks} & NOT_NEEDED_IN_COLAB
    assert "Colab's own build" in next(c.line() for c in checks if c.name == "torch")
    monkeypatch.delitem(sys.modules, "google.colab")
    outside = setup_check.check_packages()  # the same packages outside Colab: the missing tools fail
    assert {check.name for check in outside if not check.ok} == set(NOT_NEEDED_IN_COLAB) | set(KEEP_COLABS_OWN)
