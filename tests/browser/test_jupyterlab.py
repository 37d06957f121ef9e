"""The course in a real JupyterLab, driven in a real browser (`make test-browser`).

Playwright drives Debian's Chromium, headless (Playwright's own browser download is not
used). The test starts the course's JupyterLab (this Python's `jupyter lab`, with the
settings installed in this environment) on a free port with a token, serving a copy of the
course's notebooks, so nothing in the repository is touched. Kernels run under the
recording environment of glassbox/course_env.py (offline, TinyGPT). For every lesson
(notebooks/*.ipynb), chapter 02's solutions and a small widget probe, it opens the notebook,
clears its outputs, runs it with Run > Run All Cells, waits until every cell has run, and checks:

- no cell shows an error, except cells tagged raises-exception; no cell was left unrun;
- every ipywidgets output is rendered as widgets (not "Error displaying widget" or an
  empty box); the probe proves widgets render in this JupyterLab even if no chapter has one;
- JupyterLab's "get notified about official Jupyter news?" pop-up never appears, and no
  dialog is open. A control run with the course's settings overrides left out shows the
  pop-up does appear there, so the check can fail.

A screenshot per notebook goes to build/screenshots/. JupyterLab and every kernel are
stopped at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nbformat
import psutil
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from glassbox.course_env import RECORDING_ENV
from glassbox.paths import REPO_DIR

CHROMIUM = os.environ.get("GLASSBOX_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO_DIR / "build" / "screenshots"
NEWS_QUESTION = "Would you like to get notified about official Jupyter news?"
RAISES_TAG = "raises-exception"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_TIMEOUT_S = 600
PROBE = "browser_probe/widgets.ipynb"

NOTEBOOKS = [f"notebooks/{p.name}" for p in sorted((REPO_DIR / "notebooks").glob("*.ipynb"))]
NOTEBOOKS += ["solutions/02_anatomy.ipynb", PROBE]


# ----------------------------------------------------------------------------- JupyterLab

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running JupyterLab server: its URL, token and process."""

    def __init__(self, root: Path, process: subprocess.Popen, port: int, token: str, log: Path) -> None:
        self.root, self.process, self.port, self.token, self.log = root, process, port, token, log
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def url(self, path: str) -> str:
        return f"{self.base}/lab/tree/{path}?reset&token={self.token}"

    def shut_down_kernels(self) -> None:
        for kernel in self.api("/api/kernels"):
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")


def installed_overrides() -> Path:
    """Where this environment's JupyterLab reads the settings overrides (`make install` puts them there)."""
    return Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


@contextmanager
def running_lab(root: Path, workdir: Path, with_course_settings: bool = True) -> Iterator[Lab]:
    """Start `jupyter lab` serving ``root``; always stop it and every kernel it started."""
    for name in ("user-settings", "workspaces", "config", "runtime", "app-settings-empty"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, **RECORDING_ENV,
           "JUPYTER_CONFIG_DIR": str(workdir / "config"),  # not the user's own Jupyter configuration
           "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               # a fresh learner: no saved answers, no saved workspace
               f"--LabApp.user_settings_dir={workdir / 'user-settings'}",
               f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    if os.geteuid() == 0:  # CI runs as root in a throw-away machine
        command.append("--allow-root")
    if not with_course_settings:
        command.append(f"--LabApp.app_settings_dir={workdir / 'app-settings-empty'}")
    log = workdir / "jupyterlab.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    lab = Lab(root, process, port, token, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                lab.api("/api/status")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield lab
    finally:
        stop(lab)


def stop(lab: Lab) -> None:
    """Shut down every kernel, then the server; kill whatever is left of them."""
    try:
        server = psutil.Process(lab.process.pid)
        family = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    try:
        lab.shut_down_kernels()
    except Exception:  # noqa: BLE001 - the server may already be gone; the kill below still runs
        pass
    if lab.process.poll() is None:
        os.killpg(lab.process.pid, signal.SIGTERM)
        try:
            lab.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(lab.process.pid, signal.SIGKILL)
            lab.process.wait(timeout=10)
    for process in family:  # kernels run in sessions of their own
        try:
            process.wait(timeout=5)
        except psutil.TimeoutExpired:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"


# ----------------------------------------------------------------------------- fixtures

def copy_course(root: Path) -> None:
    """The notebooks the test opens, copied with the folders they sit in, plus a widget probe."""
    for folder in ("notebooks", "solutions", "exercises", "data"):
        if (REPO_DIR / folder).is_dir():
            shutil.copytree(REPO_DIR / folder, root / folder)
    probe = nbformat.v4.new_notebook()
    probe.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    probe.cells = [
        nbformat.v4.new_markdown_cell("# Widget probe\n\nIf widgets render in this JupyterLab, a slider shows below."),
        nbformat.v4.new_code_cell("import ipywidgets as widgets\n\n"
                                  "widgets.VBox([widgets.IntSlider(value=3, min=0, max=10, description='layer'),\n"
                                  "              widgets.Dropdown(options=['tinygpt', 'gpt2'], description='model')])"),
    ]
    (root / PROBE).parent.mkdir(parents=True)
    nbformat.write(probe, root / PROBE)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    overrides = installed_overrides()
    assert overrides.is_file() and json.loads(overrides.read_text()) == json.loads(
        (REPO_DIR / "lab" / "overrides.json").read_text()), (
        f"{overrides} is missing or differs from lab/overrides.json: run `make install`")
    root = tmp_path_factory.mktemp("course")
    copy_course(root)
    with running_lab(root, tmp_path_factory.mktemp("lab")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) or set GLASSBOX_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# ----------------------------------------------------------------------------- in the page

APP_READY = "() => !!(window.jupyterapp && window.jupyterapp.shell)"

NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const session = panel.sessionContext.session;
  const kernel = session && session.kernel;
  return {
    path: panel.context.path,
    kernel: kernel ? kernel.status : null,
    cells: panel.content.widgets.map((cell, index) => ({
      index,
      type: cell.model.type,
      prompt: cell.model.type === 'code' ? (cell.node.querySelector('.jp-InputPrompt') || {}).textContent || '' : '',
      count: cell.model.type === 'code' ? cell.model.executionCount : null,
      tags: cell.model.getMetadata('tags') || [],
      first_line: cell.model.sharedModel.getSource().split('\\n')[0],
      outputs: cell.model.type === 'code' ? cell.model.outputs.toJSON() : [],
    })),
  };
}"""


def notebook_state(page: Page) -> dict | None:
    return page.evaluate(NOTEBOOK_STATE)


def wait_for(page: Page, predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(interval_s * 1000)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def open_notebook(page: Page, lab: Lab, path: str) -> None:
    page.goto(lab.url(path))
    page.wait_for_function(APP_READY, timeout=120_000)
    wait_for(page, lambda: (s := notebook_state(page)) and s["path"] == path and s["kernel"] == "idle",
             180, f"{path} to open with an idle kernel")


def run_all_from_the_menu(page: Page) -> None:
    """Edit > Clear Outputs of All Cells, then Run > Run All Cells, as a learner would."""
    for menu, command in (("Edit", "editmenu:clear-all"), ("Run", "runmenu:run-all")):
        page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=menu).first.click()
        item = page.locator(f'.lm-Menu-item[data-command="{command}"]')
        item.wait_for(state="visible", timeout=10_000)
        item.click()


def finished(state: dict | None) -> bool:
    if not state or state["kernel"] != "idle":
        return False
    return not any(cell["prompt"].strip().startswith("[*]") for cell in state["cells"])


def check_no_pop_ups(page: Page) -> None:
    assert page.get_by_text(NEWS_QUESTION).count() == 0, "JupyterLab asked about Jupyter news"
    dialogs = page.locator(".jp-Dialog")
    assert dialogs.count() == 0, f"a dialog is open: {dialogs.first.inner_text()!r}"


def screenshot(page: Page, path: str, index: int | None) -> Path:
    """Scroll to the cell worth seeing (a widget or a figure) and save the page."""
    if index is not None:
        output = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index).locator(".jp-Cell-outputArea")
        for _ in range(2):  # once widgets and images have rendered, the output has its final height
            output.evaluate("element => element.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1000)
    target = SCREENSHOTS / (path.replace("/", "__").removesuffix(".ipynb") + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))
    return target


# ----------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(lab: Lab, browser: Browser, path: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_notebook(page, lab, path)
        check_no_pop_ups(page)
        run_all_from_the_menu(page)
        page.wait_for_timeout(1000)
        state = wait_for(page, lambda: (s := notebook_state(page)) and finished(s) and s, NOTEBOOK_TIMEOUT_S,
                         f"every cell of {path} to finish")
        page.wait_for_timeout(1000)  # one more look: nothing was still queued
        state = notebook_state(page)
        assert finished(state)
        code = [cell for cell in state["cells"] if cell["type"] == "code"]
        widget_cells = [cell["index"] for cell in code
                        if any(WIDGET_MIME in o.get("data", {}) for o in cell["outputs"])]
        images = [cell["index"] for cell in code if any("image/png" in o.get("data", {}) for o in cell["outputs"])]
        shot = screenshot(page, path, (widget_cells or images or [None])[0])  # taken before any check can fail
        assert shot.stat().st_size > 10_000
        problems = []
        for cell in code:
            errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
            if errors and RAISES_TAG not in cell["tags"]:
                marker = " (it is marked # NBVAL_RAISES_EXCEPTION but not tagged raises-exception, so Run All stops there)" \
                    if cell["first_line"].startswith("# NBVAL_RAISES_EXCEPTION") else ""
                problems.append(f"cell {cell['index'] + 1} ({cell['first_line']!r}) shows "
                                f"{errors[0]['ename']}: {errors[0]['evalue']}{marker}")
            elif cell["count"] is None and not errors:
                problems.append(f"cell {cell['index'] + 1} ({cell['first_line']!r}) did not run")
        assert not problems, f"{path}:\n" + "\n".join(problems)

        if path == PROBE:
            assert widget_cells, "the widget probe produced no widget output"
        for index in widget_cells:
            cell = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index)
            cell.scroll_into_view_if_needed()
            rendered = cell.locator(".jp-OutputArea-output .jupyter-widgets, .jp-OutputArea-output [class*='widget-']")
            rendered.first.wait_for(state="visible", timeout=30_000)
            text = cell.locator(".jp-Cell-outputArea").inner_text()
            assert "Error displaying widget" not in text and "Loading widget" not in text, f"cell {index + 1}: {text!r}"
        if path == PROBE:
            assert page.locator(".widget-slider").count() >= 1 and page.locator(".widget-dropdown select").count() == 1
        check_no_pop_ups(page)
    finally:
        page.close()
        lab.shut_down_kernels()


def test_news_pop_up_appears_without_the_course_settings(browser: Browser, tmp_path: Path) -> None:
    """Control: the same JupyterLab with lab/overrides.json left out does ask, so the check above can fail."""
    root = tmp_path / "root"
    root.mkdir()
    with running_lab(root, tmp_path / "lab", with_course_settings=False) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{server.base}/lab?reset&token={server.token}")
            page.wait_for_function(APP_READY, timeout=120_000)
            page.get_by_text(NEWS_QUESTION).first.wait_for(state="visible", timeout=60_000)
        finally:
            page.close()
