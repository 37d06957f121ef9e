"""Chapter 10's pickle demonstration runs code, so prove it never writes outside its temporary folder.

The test runs the notebook's own cells (those tagged ``pickle-demo``, then the cleanup cell
tagged ``pickle-demo-cleanup``) in a fresh Python process whose HOME, working directory
and TMPDIR are new empty folders, with an audit hook recording every file the process
opens for writing, renames, removes or creates. Then it checks that:

- the payload's target, read from the pickle's opcodes without loading it, is inside the
  demo folder, and the demo folder is inside the temporary folder;
- the payload really ran once (the note existed) and every recorded write stayed inside
  the demo folder;
- HOME, the working directory and the course folder have exactly the files they had before,
  and the temporary folder is empty again after the cleanup cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from glassbox.paths import REPO_DIR

NOTEBOOK = REPO_DIR / "notebooks" / "10_choosing_safely.ipynb"
SKIP_DIRS = {".venv", ".git", "__pycache__", ".bench", ".pytest_cache", "build", ".ipynb_checkpoints"}

AUDIT = textwrap.dedent("""
    import json, os, sys
    WRITES = []

    def _audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \\
                      (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                WRITES.append(("open", os.fsdecode(path)))
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            WRITES.append((event, os.fsdecode(args[1])))
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
            path = args[0]
            if isinstance(path, int):  # a file descriptor: name the file it points at
                path = os.readlink(f"/proc/self/fd/{path}")
            path = os.fsdecode(path)
            dir_fd = args[-1] if event in ("os.remove", "os.rmdir", "os.mkdir") else None
            if isinstance(dir_fd, int) and not os.path.isabs(path):  # relative to an open folder
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            WRITES.append((event, path))

    sys.addaudithook(_audit)
""")

REPORT = textwrap.dedent("""
    import re as _re
    _strings = [arg for _, arg, _ in pickletools.genops(pickle_bytes) if isinstance(arg, str)]
    _code = next(s for s in _strings if s.startswith("open("))
    _target_in_pickle = _re.match(r"open\\('([^']+)'", _code).group(1)
    _REPORT = {
        "demo_dir": str(demo_dir),
        "payload_target": str(payload_target),
        "target_in_pickle": _target_in_pickle,
        "demo_files": sorted(p.name for p in demo_dir.iterdir()),
    }
""")

FINAL = textwrap.dedent("""
    _REPORT["writes"] = WRITES
    _REPORT["demo_dir_exists_after_cleanup"] = demo_dir.exists()
    print("REPORT" + json.dumps(_REPORT))
""")


def demo_cells() -> tuple[list[str], str]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c.source for c in nb.cells if "pickle-demo" in c.metadata.get("tags", [])]
    cleanup = [c.source for c in nb.cells if "pickle-demo-cleanup" in c.metadata.get("tags", [])]
    assert tagged and len(cleanup) == 1, "the notebook lost its pickle-demo / pickle-demo-cleanup tags"
    return tagged, cleanup[0]


def listing(root: Path) -> set[str]:
    files = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        files.update(str(Path(dirpath, f).relative_to(root)) for f in filenames)
    return files


def inside(path: str, folder: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("pickle_demo")
    home, cwd, tmp = (base / name for name in ("home", "cwd", "tmp"))
    for folder in (home, cwd, tmp):
        folder.mkdir()
    tagged, cleanup = demo_cells()
    script = "\n\n".join([AUDIT, *tagged, REPORT, cleanup, FINAL])
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp),
           "PYTHONDONTWRITEBYTECODE": "1"}
    repo_before = listing(REPO_DIR)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT"))
    report = json.loads(line.removeprefix("REPORT"))
    report.update(home=str(home), cwd=str(cwd), tmp=str(tmp), stdout=result.stdout,
                  home_after=listing(home), cwd_after=listing(cwd), tmp_after=listing(tmp),
                  repo_before=repo_before, repo_after=listing(REPO_DIR))
    return report


def test_payload_target_is_inside_the_demo_folder(run) -> None:
    assert inside(run["demo_dir"], run["tmp"]), "the demo folder is not inside the temporary folder"
    assert inside(run["payload_target"], run["demo_dir"])
    assert run["target_in_pickle"] == run["payload_target"], "the pickle's code writes somewhere else"


def test_payload_ran_and_was_the_only_surprise(run) -> None:
    assert "note written: True" in run["stdout"], "the demonstration did not show the payload running"
    assert "Unsupported global" in run["stdout"], "weights_only=True did not refuse the payload"


def test_every_write_stayed_in_the_demo_folder(run) -> None:
    writes = run["writes"]
    assert any(path == run["payload_target"] for _, path in writes), "the audit hook saw no payload write"
    # tempfile itself probes the temporary folder once (it creates and removes a file there)
    # before making the demo folder; every other write must be inside the demo folder.
    probes = {path for event, path in writes if event == "os.remove" and inside(path, run["tmp"])
              and Path(path).parent == Path(run["tmp"])}
    # os.devnull is not a file on disk: dill (which torch imports when it is installed, as the
    # TRL pins bring it) opens it at import time to learn Python's file types.
    outside = [(event, path) for event, path in writes
               if not inside(path, run["demo_dir"]) and path not in probes and path != os.devnull]
    assert not outside, f"writes outside the demo folder: {outside}"
    assert len(probes) <= 1, probes


def test_nothing_left_behind(run) -> None:
    assert run["home_after"] == set(), f"files appeared in HOME: {run['home_after']}"
    assert run["cwd_after"] == set(), f"files appeared in the working directory: {run['cwd_after']}"
    assert not run["demo_dir_exists_after_cleanup"]
    assert run["tmp_after"] == set(), f"files left in the temporary folder: {run['tmp_after']}"
    assert run["repo_after"] == run["repo_before"], run["repo_after"] ^ run["repo_before"]
