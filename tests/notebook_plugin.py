"""The test suite's own pytest plugin: run each notebook once, use both cores, say where the time went.

Loaded by the root ``conftest.py`` (and by name, ``-p tests.notebook_plugin``, where a test runs
pytest on a notebook outside the repository). It does four things:

1. **One execution per notebook.** nbval runs every notebook once. For a notebook with
   exercises, a verdict item is appended after its last cell, in the same run: it reads the
   cells' results (recorded with ``glassbox.check.record_cell``, the same recorder behind
   ``make check``) and derives ``make check``'s report from them. For ``solutions/`` every
   exercise must pass; for ``exercises/`` every exercise must be "not attempted", and a second
   item checks that the untouched notebook raised NotImplementedError in exactly the cells
   tagged raises-exception. Elsewhere (a learner's copy) every exercise must pass, as for
   ``make check``. ``tests/test_exercises.py`` shows that this path and ``make check`` give the
   same verdicts on a notebook with right, wrong and untouched exercises.
2. **Both cores.** Under pytest-xdist (``make test`` passes ``-n 2``) this plugin's scheduler
   keeps the cells of one notebook, and the tests of one module, together on one worker (a
   kernel, or a module's provider, is started once) and spreads the per-chapter nbgrader tests
   one by one. Notebooks go first, since they are the longest units. (xdist's own
   ``--dist loadgroup`` cannot do this with pytest 9: it renames node ids through an attribute
   pytest 9 no longer reads, so every test became its own group and notebook cells were split
   between two kernels.)
3. **Markers for ``make test-quick``**: ``notebook`` on every test that executes a notebook
   or a kernel, ``slow`` on the few others that take more than about 15 s (``SLOW_TESTS``);
   ``make test-quick`` runs ``-m "not notebook and not slow"``.
4. **Where the time went.** At the end, the seconds spent in each kind of test (summed over
   workers) and the wall-clock time of the whole run.
5. **Kernels forked, not started.** A session that runs notebooks starts one fork server
   (tests/kernel_forkserver.py) that imports torch and transformers once; every kernel of the
   session (nbval's, nbgrader's, nbclient's) is a fresh fork of it instead of a new Python that
   spends about 5 s importing them. Without the server a kernel starts as usual.
6. **One torch thread per worker.** A test that raises torch's thread count (a training recipe
   sets its own) has it put back after the test, so the tests after it on that worker do not run
   with two threads competing with the other worker for two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

from glassbox.check import NOT_ATTEMPTED, RAISES_TAG, CellResult, find_exercises, record_cell, summarise
from tests import kernel_forkserver

# Test modules whose tests are spread over the workers one by one (each starts its own
# processes, and a module would otherwise keep one worker busy for minutes).
SPREAD_MODULES = {"tests/test_nbgrader.py", "tests/test_notebooks_on_other_servers.py"}
# Python test modules that execute notebooks or kernels (besides the nbval items).
NOTEBOOK_MODULES = {"tests/test_nbgrader.py"}

# Tests marked slow and left out of make test-quick: those that take more than about 15 s on an
# idle machine without executing a notebook (a clean virtual environment, a book build, GPT-2-sized
# models, training runs), and every module that starts a real provider process (integration tests:
# run them by name when you change the provider).
SERVER_MODULES = (
    "tests/test_api.py::", "tests/test_api_logprob_audit.py::", "tests/test_api_probe.py::",
    "tests/test_hidden_size_attack.py::", "tests/test_provider_api.py::", "tests/test_provider_class.py::",
    "tests/test_provider_fuzz.py::", "tests/test_provider_lifecycle.py::",
    "tests/test_provider_moderation.py::", "tests/test_provider_responses.py::",
)
SLOW_TESTS = SERVER_MODULES + (
    "tests/checks/test_black_box_api.py::test_backoff_",  # the back-off check starts a provider
    "tests/test_tinygpt_chat.py::test_the_same_seed_gives_bit_identical_weights",
    "tests/test_tinygpt_chat.py::test_the_shipped_run_began_like_a_fresh_run",
    "tests/test_tinygpt_chat.py::test_make_tinygpt_chat_measures_a_plain_copy_of_the_shipped_weights",
    "tests/test_tinygpt_chat.py::test_lora_",
    "tests/test_book.py::",
    "tests/test_colab.py::test_set_up_cell_in_a_stand_in_colab",
    "tests/test_loader.py::test_untrained_gpt2",
    "tests/test_forward_pass_reimplementation.py::test_lesson_reimplementation_matches_transformers[gpt2-untrained]",
    "tests/test_forward_pass_reimplementation.py::test_reference_matches_transformers[gpt2-untrained]",
)

_CELL_RESULTS: dict[str, dict[str, CellResult]] = defaultdict(dict)
Verdict = Callable[[nbformat.NotebookNode, dict[str, CellResult]], None]


# ------------------------------------------------------------------ verdicts of one run

def every_exercise_passes(nb: nbformat.NotebookNode, results: dict[str, CellResult]) -> None:
    """``make check``'s report on this run says every exercise passed and no other cell failed."""
    exercises = find_exercises(nb)
    report, ok = summarise(nb, exercises, results)
    expected = f"{len(exercises)} passed, 0 failed, 0 not attempted"
    assert ok and expected in report, f"make check would report:\n{report}"


def every_exercise_not_attempted(nb: nbformat.NotebookNode, results: dict[str, CellResult]) -> None:
    """``make check``'s report on this untouched notebook says every exercise is not attempted."""
    exercises = find_exercises(nb)
    report, ok = summarise(nb, exercises, results)
    expected = f"0 passed, 0 failed, {len(exercises)} not attempted"
    assert not ok and expected in report, f"make check would report:\n{report}"


def raises_exactly_in_tagged_cells(nb: nbformat.NotebookNode, results: dict[str, CellResult]) -> None:
    """NotImplementedError in every cell tagged raises-exception, and no error anywhere else.

    nbval's tag only tolerates an error; this checks that the error happened, and which.
    """
    tagged = 0
    for index, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        result = results.get(cell.get("id"))
        assert result is not None, f"cell {index} did not run"
        if RAISES_TAG in cell.metadata.get("tags", []):
            tagged += 1
            assert result.ename == NOT_ATTEMPTED, (
                f"cell {index} is tagged {RAISES_TAG} but raised {result.ename or 'nothing'}")
        else:
            assert result.ename is None, f"cell {index} raised {result.ename}: {result.evalue}"
    assert tagged >= 4, f"only {tagged} cells are tagged {RAISES_TAG}; every exercise needs its stub"


def verdicts_for(path: Path, nb: nbformat.NotebookNode) -> dict[str, Verdict]:
    """The verdict items to append after a notebook's cells, by name."""
    if not find_exercises(nb):
        return {}
    folder = path.parent.name
    if folder == "exercises":
        return {"make-check-says-not-attempted": every_exercise_not_attempted,
                "stubs-raise-in-tagged-cells": raises_exactly_in_tagged_cells}
    if folder == "notebooks":
        return {}
    return {"make-check-says-all-passed": every_exercise_passes}


class NotebookVerdict(pytest.Item):
    """A test that judges the run of the notebook just before it, without running it again."""

    def __init__(self, *, verdict: Verdict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verdict = verdict
        self.add_marker("notebook")

    def runtest(self) -> None:
        self.verdict(self.parent.nb, _CELL_RESULTS[str(self.path)])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value) if excinfo.errisinstance(AssertionError) else super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, f"{self.path.name}: {self.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    if isinstance(item, IPyNbCell):
        record_cell(_CELL_RESULTS[str(item.path)], item, outcome.get_result())


_TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)  # the recording environment's


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    torch = sys.modules.get("torch")  # never imported here for a test that did not import it
    if torch is not None and torch.get_num_threads() != _TORCH_THREADS:
        torch.set_num_threads(_TORCH_THREADS)


# ------------------------------------------------------------------ kernels forked from a warm process

_FORKSERVER: dict[str, Any] = {}  # "process", "folder" once started


def _use_kernel_forkserver() -> None:
    """Point both kernel specs the suite uses at the fork server: nbval's (``--nbval-current-env``,
    from ``ipykernel.kernelspec.get_kernel_dict``) and "python3" (nbgrader, nbclient; found first on
    ``JUPYTER_PATH``). Start the server, unless this pytest was started by a test of a run that has
    one (tests/test_exercises.py): its environment names that server and its kernel spec."""
    import ipykernel.kernelspec

    own_spec = ipykernel.kernelspec.get_kernel_dict
    ipykernel.kernelspec.get_kernel_dict = lambda *args, **kwargs: {**own_spec(*args, **kwargs),
                                                                    "argv": kernel_forkserver.KERNEL_ARGV}
    if Path(os.environ.get(kernel_forkserver.FORKSERVER_VARIABLE, "/nonexistent")).exists():
        return
    folder = Path(tempfile.mkdtemp(prefix="glassbox-kernels-"))
    (folder / "kernels" / "python3").mkdir(parents=True)
    (folder / "kernels" / "python3" / "kernel.json").write_text(json.dumps(ipykernel.kernelspec.get_kernel_dict(),
                                                                           indent=1))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("JUPYTER_PATH")]))
    socket_path = str(folder / "forkserver.sock")
    os.environ[kernel_forkserver.FORKSERVER_VARIABLE] = socket_path
    # Kernels that start before it listens (it imports torch first) wait for it.
    Path(socket_path + kernel_forkserver.STARTING).touch()
    _FORKSERVER["folder"] = folder
    _FORKSERVER["process"] = subprocess.Popen([sys.executable, kernel_forkserver.__file__, "serve", socket_path],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _kernel_starts() -> dict[str, int]:
    """How the kernels of this run started (from every worker's launchers and servers)."""
    path = Path(os.environ.get(kernel_forkserver.LOG_VARIABLE, ""))
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return {how: lines.count(how) for how in sorted(set(lines))}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("notebook") for item in session.items):
        _use_kernel_forkserver()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FORKSERVER:
        _FORKSERVER["process"].terminate()
        _FORKSERVER["process"].wait(timeout=30)
        shutil.rmtree(_FORKSERVER["folder"], ignore_errors=True)


# ------------------------------------------------------------------ collection: order and groups

def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _weight(item: pytest.Item, root: Path, slow_modules: set[str]) -> int:
    """Longest units first, so that two workers finish together: notebooks and the spread
    modules' tests (each executes notebooks), then whole modules that hold a slow test (a module
    stays in its own order), then the rest."""
    rel = _rel(item.path, root)
    if rel.endswith(".ipynb") or rel in SPREAD_MODULES:
        return 0
    return 1 if rel in slow_modules else 2


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and kernel_forkserver.LOG_VARIABLE not in os.environ:
        # set before xdist starts its workers, which inherit it
        handle, path = tempfile.mkstemp(prefix="glassbox-kernels-", suffix=".log")
        os.close(handle)
        os.environ[kernel_forkserver.LOG_VARIABLE] = path
        config.add_cleanup(lambda: os.unlink(path))
    config.addinivalue_line("markers", "notebook: executes a notebook or a kernel (left out of make test-quick)")
    config.addinivalue_line("markers", "slow: takes more than about 15 s without a notebook (left out of make test-quick)")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(NotebookSchedulerPlugin(), "glassbox-notebook-scheduler")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    root = config.rootpath
    with_verdicts: list[pytest.Item] = []
    for index, item in enumerate(items):
        with_verdicts.append(item)
        parent = getattr(item, "parent", None)
        last_cell = isinstance(parent, IPyNbFile) and (
            index + 1 == len(items) or getattr(items[index + 1], "parent", None) is not parent)
        if last_cell:
            for name, verdict in verdicts_for(item.path, parent.nb).items():
                with_verdicts.append(NotebookVerdict.from_parent(parent, name=name, verdict=verdict))
    for item in with_verdicts:
        rel = _rel(item.path, root)
        if rel.endswith(".ipynb") or rel in NOTEBOOK_MODULES:
            item.add_marker("notebook")
        if item.nodeid.startswith(SLOW_TESTS):
            item.add_marker("slow")
    slow_modules = {_rel(item.path, root) for item in with_verdicts if item.get_closest_marker("slow")}
    # stable: the cells of a notebook and the tests of a module keep their order
    items[:] = sorted(with_verdicts, key=lambda item: _weight(item, root, slow_modules))


def scope_of(nodeid: str) -> str:
    """The unit of work one worker takes whole: a notebook or a test module, or a single test of
    a module in ``SPREAD_MODULES``."""
    path = nodeid.split("::", 1)[0]
    return nodeid if path in SPREAD_MODULES else path


class NotebookSchedulerPlugin:
    """Registered only when pytest-xdist is active (its hook does not exist without it)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        from xdist.scheduler import LoadScopeScheduling

        class NotebookScheduling(LoadScopeScheduling):
            """xdist's scope scheduling (units in collection order with ``--no-loadscope-reorder``,
            each handed to the next free worker), with :func:`scope_of` as the unit."""

            def _split_scope(self, nodeid: str) -> str:
                return scope_of(nodeid)

        return NotebookScheduling(config, log)


# ------------------------------------------------------------------ where the time went

_KINDS = [
    ("lessons (nbval)", re.compile(r"^notebooks/")),
    ("solutions and exercises (nbval + make check's verdicts)", re.compile(r"^(solutions|exercises)/")),
    ("nbgrader (release, autograde)", re.compile(r"^tests/test_nbgrader\.py")),
    ("lessons against a llama.cpp-like server", re.compile(r"^tests/test_notebooks_on_other_servers\.py")),
    ("exercise checks' wrong answers", re.compile(r"^tests/(checks/|test_\w+_checks\.py)")),
    ("provider", re.compile(r"^tests/test_(provider|api|hidden_size)")),
    ("other unit tests", re.compile(r"")),
]
_SECONDS: dict[str, float] = defaultdict(float)
_COUNTS: dict[str, int] = defaultdict(int)
_STARTED = time.monotonic()


def _kind(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return next(name for name, pattern in _KINDS if pattern.search(path))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    kind = _kind(report.nodeid)
    _SECONDS[kind] += report.duration
    if report.when == "call":
        _COUNTS[kind] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SECONDS or hasattr(terminalreporter.config, "workerinput"):
        return
    write = terminalreporter.write_line
    terminalreporter.section("where the time went")
    write(f"{'kind of test':<58}{'tests':>7}{'seconds':>10}")
    for name, _ in _KINDS:
        if name in _SECONDS:
            write(f"{name:<58}{_COUNTS[name]:>7}{_SECONDS[name]:>10.1f}")
    write(f"{'all kinds (summed over workers)':<58}{sum(_COUNTS.values()):>7}{sum(_SECONDS.values()):>10.1f}")
    write(f"{'wall clock, collection included':<58}{'':>7}{time.monotonic() - _STARTED:>10.1f}")
    if starts := _kernel_starts():
        write("kernels: " + ", ".join(f"{count} {how}" for how, count in starts.items()))
