"""Execute the course notebooks headlessly, one fresh kernel each.

    python scripts/run_notebooks.py --html build      # make run: execute, write HTML into build/
    python scripts/run_notebooks.py --in-place        # make outputs: refresh the stored outputs
    python scripts/run_notebooks.py --in-place notebooks/00_setup_check.ipynb

Both modes run every ``notebooks/*.ipynb`` and ``solutions/*.ipynb`` (not ``exercises/``,
whose stubs raise on purpose), or only the notebooks named on the command line. Each
notebook runs in a ``python3`` kernel of this same Python environment, started in the
notebook's own folder. A cell may raise only if it is tagged ``raises-exception`` or
starts with ``# NBVAL_RAISES_EXCEPTION`` (the markers nbval accepts).

``--html`` keeps your GLASSBOX_MODEL, so ``GLASSBOX_MODEL=gpt2-untrained make run`` works.
``--in-place`` uses the recording environment (offline, TinyGPT), the same one the tests
check stored outputs under, then regenerates ``exercises/`` if scripts/make_exercises.py exists.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import nbformat
import zmq
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter
from traitlets.config import Config

from glassbox.course_env import apply_quiet_env, apply_recording_env

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_FOLDERS = ("notebooks", "solutions")
CELL_TIMEOUT_SECONDS = 600
KERNEL_NAME = "python3"
RAISES_TAG = "raises-exception"
RAISES_COMMENT = "# NBVAL_RAISES_EXCEPTION"


class NotebookFailed(Exception):
    """A notebook stopped with an error; the message names the notebook, the cell and the error."""


def course_notebooks() -> list[Path]:
    """Every notebook that must run from top to bottom without error, in a stable order."""
    return [path for folder in NOTEBOOK_FOLDERS for path in sorted((REPO_DIR / folder).glob("*.ipynb"))]


def shown(path: Path) -> str:
    """A notebook's path relative to the course folder, for progress lines and errors."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def execute(path: Path, on_kernel_start: Callable[[int], None] | None = None) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel started in its folder; return it with its new outputs.

    ``on_kernel_start`` is called with the kernel's process id once the kernel is up
    (scripts/bench.py uses it to measure the kernel's memory). Raises NotebookFailed.
    """
    nb = nbformat.read(path, as_version=4)
    marked = _tag_cells_allowed_to_raise(nb)
    running: dict[str, int] = {}

    def cell_started(cell: nbformat.NotebookNode, cell_index: int) -> None:
        running["index"] = cell_index

    def kernel_started(notebook: nbformat.NotebookNode) -> None:
        if on_kernel_start is not None:
            on_kernel_start(client.km.provisioner.pid)

    config = Config()
    if zmq.has("curve"):  # encrypt kernel traffic (ipykernel warns on every start otherwise)
        config.KernelManager.transport_encryption = "auto"
    client = NotebookClient(
        nb,
        config=config,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name=KERNEL_NAME,
        record_timing=False,  # no execution timestamps in the stored notebooks
        resources={"metadata": {"path": str(path.parent)}},  # the kernel's working folder
        on_cell_start=cell_started,
        on_notebook_start=kernel_started,
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        raise NotebookFailed(_failure_message(path, nb, running.get("index"), error)) from None
    finally:
        for cell in marked:
            cell.metadata.tags.remove(RAISES_TAG)
            if not cell.metadata.tags:
                del cell.metadata["tags"]
    return nb


def _tag_cells_allowed_to_raise(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """Tag cells marked ``# NBVAL_RAISES_EXCEPTION`` so nbclient lets them raise too.

    Returns the cells that were tagged here, so the tag can be taken off again.
    """
    marked = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and cell.source.lstrip().startswith(RAISES_COMMENT) and RAISES_TAG not in tags:
            cell.metadata["tags"] = [*tags, RAISES_TAG]
            marked.append(cell)
    return marked


def _failure_message(path: Path, nb: nbformat.NotebookNode, index: int | None, error: Exception) -> str:
    """Which notebook and cell failed, the start of that cell and the error itself."""
    if index is None:
        return f"{shown(path)} failed before its first cell ran: {type(error).__name__}: {error}"
    first_line = nb.cells[index].source.strip().splitlines()[0] if nb.cells[index].source.strip() else ""
    return (
        f"{shown(path)} failed in cell {index + 1} of {len(nb.cells)} (it starts: {first_line!r}).\n"
        f"{type(error).__name__}: {error}"
    )


def strip_volatile_metadata(nb: nbformat.NotebookNode) -> None:
    """Remove metadata that changes on every run (execution timing), keeping everything else."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)


def write_html(nb: nbformat.NotebookNode, path: Path, out_dir: Path) -> Path:
    """Write an executed notebook as HTML to ``out_dir/<folder>/<name>.html``; return that path."""
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    target = out_dir / path.parent.name / f"{path.stem}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return target


def regenerate_exercises() -> bool:
    """Run scripts/make_exercises.py if it exists; return False only if it fails."""
    script = REPO_DIR / "scripts" / "make_exercises.py"
    if not script.exists():
        print("scripts/make_exercises.py does not exist yet: exercises/ left as it is.")
        return True
    print("Regenerating exercises/ with scripts/make_exercises.py")
    return subprocess.run([sys.executable, str(script)], cwd=REPO_DIR).returncode == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: --html DIR or --in-place, then optional notebook paths."""
    parser = argparse.ArgumentParser(description="Execute the course notebooks headlessly.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--html", metavar="DIR", type=Path, help="write one HTML file per notebook into DIR")
    mode.add_argument("--in-place", action="store_true", help="store the new outputs in the notebooks")
    parser.add_argument("notebooks", nargs="*", type=Path, help="only these notebooks (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; return 0 if all of them ran without error, else 1."""
    args = parse_args(argv)
    # The environment must be set before any kernel starts: kernels inherit it.
    if args.in_place:
        apply_recording_env()
    else:
        apply_quiet_env()

    paths = [path.resolve() for path in args.notebooks] or course_notebooks()
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        print("No such notebook: " + ", ".join(missing), file=sys.stderr)
        return 2

    failures: list[str] = []
    started = time.perf_counter()
    for number, path in enumerate(paths, start=1):
        print(f"[{number}/{len(paths)}] {shown(path)} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            nb = execute(path)
        except NotebookFailed as failure:
            print(f"FAILED after {time.perf_counter() - start:.1f} s", flush=True)
            print(failure, file=sys.stderr, flush=True)
            failures.append(shown(path))
            continue
        if args.in_place:
            strip_volatile_metadata(nb)
            nbformat.write(nb, path)
            where = "outputs stored"
        else:
            where = f"-> {shown(write_html(nb, path, args.html.resolve()))}"
        print(f"ok in {time.perf_counter() - start:.1f} s {where}", flush=True)

    print(f"{len(paths) - len(failures)} of {len(paths)} notebooks ran in {time.perf_counter() - started:.0f} s.")
    if failures:
        print("These notebooks failed: " + ", ".join(failures), file=sys.stderr)
        if args.in_place:
            print("exercises/ was not regenerated because a notebook failed.", file=sys.stderr)
        return 1
    if args.in_place and not regenerate_exercises():
        print("scripts/make_exercises.py failed.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
