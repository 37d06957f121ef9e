"""Serve a GGUF file with llama-cpp-python's server on 127.0.0.1 and probe what it honours (`make test-servers`).

    .venv/bin/python scripts/probe_servers.py --venv build/servers-venv --model build/gguf/tinygpt-f32.gguf \\
        --version 0.3.36 --out data/llamacpp_probe.csv

The probe is the notebooks' own (``glassbox.api.probe_endpoint``: models.retrieve, n, prompt
lists, logprobs, echo consistency, chat top_logprobs, limits, system_fingerprint, Responses),
plus what a maintainer wants to know before pointing a class at the server: ``max_tokens=0``,
a ``logit_bias`` key that is not a token id, a token-id prompt, an unknown model name, a wrong
key, and how close its top-5 logprobs are to the open model's own. The last probe sends a
prompt longer than the model's context and records whether the server survives it.

The server is started with explicit settings, never its defaults: llama-cpp-python's server
listens on ``localhost:8000`` without a key and with a 2,048-token context by default (and
reads HOST, PORT, MODEL, API_KEY... from the environment, which is cleared of them here).
``--keep-running`` leaves it up and prints how to reach it (the port, never the key's value
in a file); otherwise it is stopped before the script ends.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVED_ALIAS = "tinygpt-gguf"
#: llama-cpp-python reads its settings from environment variables of these names too.
SETTING_VARIABLES = ("MODEL", "MODEL_ALIAS", "HOST", "PORT", "API_KEY", "N_CTX", "CHAT_FORMAT", "CONFIG_FILE", "VERBOSE")


def start_server(venv: Path, model: Path, port: int, n_ctx: int, api_key: str, log_path: Path) -> subprocess.Popen:
    import socket

    with socket.socket() as probe:  # another server on the port would answer the probe instead of ours
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"Port {port} on 127.0.0.1 is already in use: stop what listens there or pass --port.")
    command = [str(venv / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", SERVED_ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--api_key", api_key,
               "--n_threads", "1", "--n_threads_batch", "1"]
    environment = {key: value for key, value in os.environ.items() if key.upper() not in SETTING_VARIABLES}
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment,
                               start_new_session=True)
    atexit.register(stop_server, process)
    return process


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_ready(process: subprocess.Popen, base: str, api_key: str, log_path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-cpp-python's server stopped while starting (exit {process.returncode}); "
                             f"its log:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"llama-cpp-python's server did not answer within {timeout:.0f} s.")


def _row(feature: str, expected: str, works: bool | None, seen: str, notebooks_do: str = "") -> dict[str, str]:
    return {"feature": feature, "openai_documents": expected, "works": {True: "yes", False: "NO", None: "not checked"}[works],
            "seen": seen, "notebooks_do": notebooks_do}


def extra_probes(client: openai.OpenAI, model: str, base: str) -> list[dict[str, str]]:
    """What the notebooks' probe does not ask; each a row with one sentence of what was seen."""
    from glassbox.api import PROBE_PROMPT, _short_error

    rows = []
    try:
        reply = client.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=0, temperature=0)
        generated = reply.usage.completion_tokens if reply.usage else len(reply.choices[0].text)
        rows.append(_row("max_tokens=0", "at most 0 tokens, or a 400", generated == 0,
                         f"max_tokens=0 returned {generated} completion token(s)" + (": no limit." if generated else ".")))
    except openai.BadRequestError as error:
        rows.append(_row("max_tokens=0", "at most 0 tokens, or a 400", True, f"refused: {_short_error(error)}."))
    except Exception as error:  # noqa: BLE001
        rows.append(_row("max_tokens=0", "at most 0 tokens, or a 400", False, f"gave {_short_error(error)}."))

    try:
        client.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=1, logit_bias={"not-a-token": 1})
        rows.append(_row("logit_bias key", "a key that is not a token id gets a 400", False, "accepted unchecked."))
    except openai.BadRequestError as error:
        rows.append(_row("logit_bias key", "a key that is not a token id gets a 400", True, f"refused: {_short_error(error)}."))
    except Exception as error:  # noqa: BLE001
        rows.append(_row("logit_bias key", "a key that is not a token id gets a 400", False, f"gave {_short_error(error)}."))

    try:
        reply = client.completions.create(model=model, prompt=[15496, 995], max_tokens=1, temperature=0)
        rows.append(_row("token-id prompt", "a prompt given as token ids ([15496, 995] = 'Hello world') is accepted",
                         bool(reply.choices), f"answered {reply.choices[0].text!r}." if reply.choices else "no choice."))
    except Exception as error:  # noqa: BLE001
        rows.append(_row("token-id prompt", "a prompt given as token ids ([15496, 995] = 'Hello world') is accepted", False,
                         f"gave {_short_error(error)}."))

    try:
        reply = client.completions.create(model="no-such-model", prompt=PROBE_PROMPT, max_tokens=1)
        rows.append(_row("unknown model", "an unknown model name gets a 404", False,
                         f"model 'no-such-model' was answered (as {reply.model!r})."))
    except openai.NotFoundError as error:
        rows.append(_row("unknown model", "an unknown model name gets a 404", True, f"refused: {_short_error(error)}."))
    except Exception as error:  # noqa: BLE001
        rows.append(_row("unknown model", "an unknown model name gets a 404", False, f"gave {_short_error(error)}."))

    wrong = openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0)
    try:
        wrong.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=1)
        rows.append(_row("wrong key", "a wrong key gets a 401", False, "a wrong key was accepted."))
    except openai.AuthenticationError as error:
        rows.append(_row("wrong key", "a wrong key gets a 401", True, f"refused: {_short_error(error)}."))
    except Exception as error:  # noqa: BLE001
        rows.append(_row("wrong key", "a wrong key gets a 401", False, f"gave {_short_error(error)}."))

    rows.append(agreement_with_open_model(client, model))
    return rows


def agreement_with_open_model(client: openai.OpenAI, model: str) -> dict[str, str]:
    """The largest gap between the server's top-5 logprobs and TinyGPT's own, over a few prompts."""
    import torch

    from glassbox.loader import load_model

    expected = "top-5 logprobs are the open model's own log-softmax, within 0.01"
    local, tokenizer = load_model("tinygpt", verbose=False)
    worst, compared = 0.0, 0
    for prompt in ("The nurse said that", "Once upon a time, the engineer", "It was a"):
        try:
            reply = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
            top = reply.choices[0].logprobs.top_logprobs[0]
        except Exception as error:  # noqa: BLE001
            return _row("logprobs agree with the open model", expected, False, f"logprobs=5 gave {error!r}"[:200])
        with torch.no_grad():
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            reference = torch.log_softmax(local(ids).logits[0, -1].float(), dim=-1)
        for token, value in top.items():
            token_ids = tokenizer.encode(token)
            if len(token_ids) != 1:
                continue
            worst = max(worst, abs(value - float(reference[token_ids[0]])))
            compared += 1
    return _row("logprobs agree with the open model", expected, worst < 1e-2 if compared else None,
                f"largest gap over {compared} top-5 logprobs of 3 prompts: {worst:.1e}.")


def overlong_prompt(client: openai.OpenAI, model: str, process: subprocess.Popen, n_ctx: int) -> dict[str, str]:
    """Last, because it may bring the server down: a prompt longer than the context."""
    from glassbox.api import _short_error

    expected = "a prompt longer than the context gets a 400 (context_length_exceeded)"
    prompt = "the " * (n_ctx + 20)
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=1)
        seen, works = "accepted.", False
    except openai.BadRequestError as error:
        seen, works = f"refused: {_short_error(error)}.", True
    except Exception as error:  # noqa: BLE001
        seen, works = f"gave {_short_error(error)}.", False
    time.sleep(2)
    if process.poll() is not None:
        seen += f" The server process then ended (exit code {process.returncode})."
        works = False
    return _row("prompt past the context", expected, works, seen, "the notebooks never send one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, required=True, help="the environment with llama-cpp-python[server]")
    parser.add_argument("--model", type=Path, required=True, help="the GGUF file to serve")
    parser.add_argument("--version", required=True, help="the llama-cpp-python version (recorded in the table)")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--n-ctx", type=int, default=128, help="the context (TinyGPT has 128 positions)")
    parser.add_argument("--out", type=Path, help="the CSV table to write")
    parser.add_argument("--keep-running", action="store_true", help="leave the server running after the probe")
    args = parser.parse_args(argv)

    from glassbox.api import probe_endpoint

    installed = subprocess.run([str(args.venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                               capture_output=True, text=True)
    version = installed.stdout.strip()
    if installed.returncode != 0 or version != args.version:
        raise SystemExit(f"{args.venv} does not hold llama-cpp-python {args.version} ({installed.stderr.strip()[-300:] or version}).")
    api_key = "sk-llamacpp-" + secrets.token_urlsafe(12)
    log_path = ROOT / "build" / "llamacpp-server.log"
    base = f"http://127.0.0.1:{args.port}/v1"
    process = start_server(args.venv, args.model.resolve(), args.port, args.n_ctx, api_key, log_path)
    try:
        wait_ready(process, base, api_key, log_path)
        client = openai.OpenAI(base_url=base, api_key=api_key, max_retries=0, timeout=120)
        capabilities = probe_endpoint(client, SERVED_ALIAS, base_url="llama-cpp-python's server")
        rows = capabilities.rows() + extra_probes(client, SERVED_ALIAS, base)
        if args.keep_running:
            print(f"llama-cpp-python's server is running on 127.0.0.1:{args.port} (pid {process.pid}); "
                  "the over-long-prompt probe was not sent.")
        else:
            rows.append(overlong_prompt(client, SERVED_ALIAS, process, args.n_ctx))
    finally:
        if not args.keep_running:
            stop_server(process)
    today = dt.date.today().isoformat()
    for row in rows:
        row.update({"server": "llama-cpp-python", "version": version, "model": f"TinyGPT as GGUF f32 (n_ctx {args.n_ctx})",
                    "as_of": today,
                    "source": f"measured here with llama-cpp-python {version} on {today} (scripts/test_servers.sh)"})
    width = max(len(row["feature"]) for row in rows)
    for row in rows:
        print(f"  {row['feature']:<{width}}  {row['works']:<11}  {row['seen']}")
    if args.out:
        args.out = args.out.resolve()
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"Wrote {args.out.relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out}.")
    if args.keep_running:
        atexit.unregister(stop_server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
