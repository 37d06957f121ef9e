"""Chapters 06-08 run to the end against a server that is "OpenAI-compatible" the way llama.cpp's is.

The server is tests/fake_llamacpp.py: a real uvicorn app on 127.0.0.1 that ignores `n`,
refuses prompt lists with 500, has no /v1/models/{id}, accepts out-of-range values and
shifts `echo`'s log-probabilities by one token (the quirks measured on llama-cpp-python's
server, issue 19). Each lesson must finish with no error output, and say in one sentence
what it skipped or did differently: no traceback and no silently wrong statistic (before the
probe, chapter 08 printed "3 paid queries in 3 requests" and crashed with IndexError).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parent))
import fake_llamacpp  # noqa: E402

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parent.parent

#: For each lesson, sentences its outputs must contain on such a server.
EXPECTED = {
    "notebooks/06_black_box_api.ipynb": [
        "Skipped: describing one model by name needs GET /v1/models/{id}",
        "Not sent: this endpoint accepts out-of-range values unchecked",
        "Skipped: swapping the weights behind the model name needs the course's own provider",
        "n                   NO",
    ],
    "notebooks/07_api_leaks.ipynb": [
        "Skipped: membership inference through the API needs `echo=True` giving each prompt token its own",
        "logprobs=20 was accepted: this endpoint does not enforce OpenAI's limit of 5.",
        "Skipped: switching the logit_bias behaviour needs the course's own provider",
    ],
    "notebooks/08_auditing.ipynb": [
        "n: n=3 returned 1 choice(s): n is ignored.",
        "300 paid queries in 300 requests",
        "Skipped: measuring a loss through the API needs `echo=True`",
    ],
}


@pytest.fixture(scope="module")
def llamacpp_like():
    with fake_llamacpp.serve() as (base_url, quirks):
        yield base_url, quirks


@pytest.mark.parametrize("lesson", sorted(EXPECTED))
def test_lesson_runs_on_a_llamacpp_like_server(lesson: str, llamacpp_like, monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, _ = llamacpp_like
    for name in ("GLASSBOX_REAL_API", "GLASSBOX_API_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLASSBOX_API_BASE", base_url)
    monkeypatch.setenv("GLASSBOX_API_KEY", "no-key-needed-here")
    monkeypatch.setenv("GLASSBOX_MODEL", "tinygpt")
    path = ROOT / lesson
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors, text = [], []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                errors.append(f"cell {index}: {output.ename}: {output.evalue[:200]}")
            text.append(output.get("text", "") if output.output_type == "stream"
                        else output.get("data", {}).get("text/plain", ""))
    assert not errors, errors
    printed = "".join(text)
    assert "Traceback" not in printed
    missing = [sentence for sentence in EXPECTED[lesson] if sentence not in printed]
    assert not missing, missing
