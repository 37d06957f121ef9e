"""The provider under a real class: fair to every student, hard to abuse (issue #17).

Each test here reproduces one way a malicious (or merely heavy) student could hurt the
class or the operator, against the real server where that is possible: lone surrogates,
refused requests that cost nothing, requests that compute far more than they are charged,
one key's backlog holding back another key, a request log that anyone can fill or read,
the class mode's socket, and the smaller items. Fairness is measured in engine steps (how
many steps a request waited before it started), never in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from glassbox.paths import REPO_DIR
from glassbox.provider import gatekeeper as gatekeeper_module
from glassbox.provider.engine import FairQueue, SamplingParams, Sequence
from glassbox.provider.gatekeeper import Gatekeeper, KeyStore
from glassbox.provider.ratelimit import RateLimiter
from glassbox.provider.requestlog import MAX_FIELD_CHARS, MAX_LINE_BYTES, RequestLog, read_log_file
from glassbox.provider.settings import DEFAULT_MAX_REQUEST_TOKENS, ApiKey
from test_provider_api import local, raw  # noqa: F401 - fixtures and helpers shared with the API tests
from test_provider_lifecycle import alive, run_cli, wait_gone
from test_provider_shared import shared_provider

NO_END = {"50256": -100}  # no early end of text: every sequence runs to max_tokens


@pytest.fixture(scope="module")
def provider(request):
    return shared_provider(request)


def log_entry(provider, request_id: str) -> dict:
    """The request log's line for one request (by the x-request-id the response carried)."""
    for entry in reversed(provider.read_log()):
        if entry.get("request_id") == request_id:
            return entry
    raise AssertionError(f"no log line for {request_id}")


def escaped(body: dict) -> bytes:
    """``body`` as JSON with every non-ASCII character escaped, so a lone surrogate travels as the text \\ud800."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


# ----- 1. lone surrogates ------------------------------------------------------------------------

LONE = "\ud800"


def _surrogate_cases(model: str) -> list[tuple[str, dict, str]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    completion = {"model": model, "prompt": "Hi", "max_tokens": 2}
    return [
        ("/v1/completions", {**completion, "prompt": LONE}, "prompt"),
        ("/v1/completions", {**completion, "prompt": ["fine", "also " + LONE]}, "prompt[1]"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": LONE}]}, "messages[0].content"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": [{"type": "text", "text": LONE}]}]},
         "messages[1].content[0].text"),
        ("/v1/completions", {**completion, "user": "student " + LONE}, "user"),
        ("/v1/completions", {**completion, "stop": ["\n", LONE]}, "stop[1]"),
        ("/v1/completions", {**completion, "model": model + LONE}, "model"),
        ("/v1/chat/completions", {**chat, "user": LONE}, "user"),
        ("/v1/completions", {**completion, "logit_bias": {LONE: 1}}, "logit_bias"),
        ("/v1/completions", {**completion, "unknown" + LONE: 1}, "unknown\\ud800"),
    ]


def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field_and_still_logged(provider) -> None:
    problems = []
    for path, body, param in _surrogate_cases(provider.model_name):
        response = raw(provider, "POST", path, content=escaped(body), headers={"Content-Type": "application/json"})
        error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 400 or error.get("param") != param or error.get("code") != "invalid_value":
            problems.append(f"{param}: {response.status_code} {response.text[:200]}")
            continue
        assert "lone surrogate" in error["message"]
        entry = log_entry(provider, response.headers["x-request-id"])
        assert entry["status"] == 400 and entry["error"] == "invalid_value"
    assert not problems, "\n".join(problems)
    assert raw(provider, "GET", "/health", key=None).json() == {"status": "ok"}


def test_a_surrogate_pair_is_a_character_and_is_served(provider) -> None:
    body = {"model": provider.model_name, "prompt": "A smile: \U0001F600", "max_tokens": 2, "user": "\U0001F600"}
    response = raw(provider, "POST", "/v1/completions", content=escaped(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert log_entry(provider, response.headers["x-request-id"])["parameters"]["user"] == "\U0001F600"


def test_the_log_writes_every_line_whatever_it_holds(tmp_path) -> None:
    log = RequestLog(tmp_path / "requests.jsonl")
    log.write({"request_id": "req_1", "status": 200, "prompt": LONE, "parameters": {"user": "a" + LONE, LONE: [LONE]}})
    log.close()
    (entry,) = read_log_file(tmp_path / "requests.jsonl")
    assert entry["request_id"] == "req_1" and entry["prompt"] == "\\ud800"  # written as visible text
    assert entry["parameters"] == {"user": "a\\ud800", "\\ud800": ["\\ud800"]}


# ----- 2. cheap checks first; refused requests cost a request ----------------------------------------


def test_requests_refused_as_invalid_count_against_the_request_budget(provider) -> None:
    key = provider.api_keys[2]
    bad = {"model": provider.model_name, "prompt": "Hi", "logit_bias": {str(token): 1000 for token in range(300)}}
    try:
        provider.set_limits(rpm=5, tpm=None)
        statuses = [raw(provider, "POST", "/v1/completions", key=key, json=bad).status_code for _ in range(8)]
        assert statuses == [400] * 5 + [429] * 3
        # over its limit, the key is refused before its body is read: a huge body gets the 429, not a 413
        huge = raw(provider, "POST", "/v1/completions", key=key, content=b"x" * (3 * 1024 * 1024),
                   headers={"Content-Type": "application/json"})
        assert huge.status_code == 429 and huge.json()["error"]["code"] == "rate_limit_exceeded"
        assert raw(provider, "POST", "/v1/completions", json={**bad, "logit_bias": None}).status_code == 200  # other keys
    finally:
        provider.set_limits(rpm=None, tpm=None)


def _call(gate: Gatekeeper, path: str, body: bytes, *, key: str = "sk-learner-123456", hang_after_first: bool = False,
          chunks: int = 1) -> tuple[int, dict]:
    """Send one request through the gatekeeper alone (no server); returns (status, JSON body)."""
    pieces = [body[i * len(body) // chunks:(i + 1) * len(body) // chunks] for i in range(chunks)]

    async def run() -> tuple[int, dict]:
        sent: list[dict] = []
        queue = list(pieces)

        async def receive() -> dict:
            if not queue:
                await asyncio.sleep(3600)  # a client that stops sending
            piece = queue.pop(0)
            if hang_after_first and queue:
                queue[:] = []
                return {"type": "http.request", "body": piece, "more_body": True}
            return {"type": "http.request", "body": piece, "more_body": bool(queue)}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path,
                 "headers": [(b"authorization", b"Bearer " + key.encode()), (b"content-type", b"application/json")]}
        await gate(scope, receive, send)
        start = next(message for message in sent if message["type"] == "http.response.start")
        content = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
        return start["status"], json.loads(content)

    return asyncio.run(run())


async def _reached(scope, receive, send) -> None:  # the app behind the gatekeeper: "the request got through"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def _gate(tmp_path: Path) -> Gatekeeper:
    keys = KeyStore([ApiKey("key-1", "sk-learner-123456")], "sk-admin-654321")
    return Gatekeeper(_reached, keys=keys, log=RequestLog(tmp_path / "requests.jsonl"), limiter=RateLimiter())


def test_large_bodies_are_checked_in_a_worker_thread_not_on_the_event_loop(tmp_path, monkeypatch) -> None:
    threads: list[str] = []
    check = gatekeeper_module.check_body

    def recording(raw_body: bytes, path: str):
        threads.append(threading.current_thread().name)
        return check(raw_body, path)

    monkeypatch.setattr(gatekeeper_module, "check_body", recording)
    gate = _gate(tmp_path)
    many = json.dumps({"model": "m", "prompt": "x", "logit_bias": {str(i): "a" for i in range(50_000)}}).encode()
    status, body = _call(gate, "/v1/completions", many)
    assert status == 400 and body["error"]["param"] == "logit_bias"
    small = json.dumps({"model": "m", "prompt": "x"}).encode()
    assert _call(gate, "/v1/completions", small) == (200, {"ok": True})
    assert threads[0] != threading.main_thread().name  # the large body: off the loop (asyncio.run runs it in this thread)
    assert threads[1] == threading.main_thread().name  # a small one is not worth the hop


def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gatekeeper_module, "BODY_TIMEOUT_SECONDS", 0.3)
    body = json.dumps({"model": "m", "prompt": "x" * 1000}).encode()
    status, answer = _call(_gate(tmp_path), "/v1/completions", body, chunks=2, hang_after_first=True)
    assert status == 408 and answer["error"]["code"] == "request_timeout"
    (entry,) = read_log_file(tmp_path / "requests.jsonl")
    assert entry["status"] == 408


# ----- 3. what a request computes, and fairness between keys -------------------------------------


def test_tokens_are_counted_per_choice_so_n_and_echo_cost_what_they_compute(provider, local) -> None:  # noqa: F811
    _, tokenizer = local
    key = provider.api_keys[2]
    client = openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=0)
    small_prompt, n, max_tokens = "The nurse said", 3, 5
    small_cost = n * (len(tokenizer(small_prompt)["input_ids"]) + max_tokens)
    prompts = [f"Story {i}: " + "the nurse and the teacher walked to the market " * 6 for i in range(4)]
    heavy_cost = sum(32 * (len(tokenizer(prompt)["input_ids"]) + 1) for prompt in prompts)
    try:
        provider.set_limits(rpm=None, tpm=5000)
        ok = client.completions.with_raw_response.create(model=provider.model_name, prompt=small_prompt, n=n,
                                                         max_tokens=max_tokens)
        assert ok.headers["x-ratelimit-remaining-tokens"] == str(5000 - small_cost)
        assert heavy_cost > 5000  # (the old count, prompt tokens once + n x max_tokens, was a tenth of it)
        with pytest.raises(openai.RateLimitError) as raised:
            client.completions.create(model=provider.model_name, prompt=prompts, n=32, max_tokens=1, echo=True, logprobs=5)
        assert f"it needs {heavy_cost:,} tokens" in raised.value.message
        assert raised.value.response.headers["x-should-retry"] == "false"
    finally:
        provider.set_limits(rpm=None, tpm=None)


def test_one_request_may_not_compute_more_than_the_per_request_ceiling(provider, local) -> None:  # noqa: F811
    _, tokenizer = local
    prompts = [f"Sample {i}: the nurse and the teacher walked to the market, and then they went home again" for i in range(16)]
    cost = sum(128 * (len(tokenizer(prompt)["input_ids"]) + 1) for prompt in prompts)
    assert cost > DEFAULT_MAX_REQUEST_TOKENS
    for key in (provider.api_key, provider.admin_key):  # the ceiling protects the server: it holds for every key
        with pytest.raises(openai.BadRequestError) as raised:
            openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=0).completions.create(
                model=provider.model_name, prompt=prompts, n=128, max_tokens=1)
        assert raised.value.code == "request_too_large"
        assert f"{cost:,} tokens" in raised.value.message and f"{DEFAULT_MAX_REQUEST_TOKENS:,}" in raised.value.message


def _sequences(owner: str, count: int, max_tokens: int = 8) -> list[Sequence]:
    sequences = [Sequence([1, 2, 3], SamplingParams(max_tokens=max_tokens), seed=0, index=i) for i in range(count)]
    for sequence in sequences:
        sequence.owner = owner  # (read by this test only)
    return sequences


def test_the_fair_queue_lets_keys_take_turns_each_up_to_its_share() -> None:
    queue = FairQueue()
    queue.extend("alice", _sequences("alice", 100))
    queue.extend("bob", _sequences("bob", 2))
    queue.extend("carol", _sequences("carol", 1))
    taken, _ = queue.take({}, max_batch=8, prompt_budget=10_000)
    assert [s.owner for s in taken] == ["alice", "bob", "carol", "alice", "bob"]  # in turn; each up to 8 // 3 keys = 2
    taken, _ = queue.take({"alice": 2}, max_batch=8, prompt_budget=10_000)  # bob and carol are done: alice alone
    assert [s.owner for s in taken] == ["alice"] * 6
    # alice fills the batch of 8 and has 92 waiting; dave arrives with 3: they start at the next step
    taken, _ = queue.take({"alice": 8}, max_batch=8, prompt_budget=10_000)
    assert taken == []
    queue.extend("dave", _sequences("dave", 3))
    taken, _ = queue.take({"alice": 8}, max_batch=8, prompt_budget=10_000)
    assert [s.owner for s in taken] == ["dave"] * 3  # below their share (8 // 2), past a full batch (the engine then
    taken, _ = queue.take({"alice": 4, "dave": 3}, max_batch=8, prompt_budget=10_000)  # pauses alice down to 4)
    assert taken == []  # alice is at her share: the free slot is not hers while dave works
    one_token = _sequences("erin", 5, max_tokens=1)
    queue.extend("erin", one_token)
    taken, _ = queue.take({"alice": 4, "dave": 3}, max_batch=8, prompt_budget=10_000)
    assert [s.owner for s in taken] == ["erin"] * 5  # one-token sequences take no slot
    paused = _sequences("alice", 2)
    queue.requeue("alice", paused)  # paused sequences go first when it is alice's turn again
    taken, _ = queue.take({"alice": 2}, max_batch=8, prompt_budget=10_000)
    assert taken[:2] == paused and len(taken) == 6
    assert len(queue) == 92 - 4


def test_paused_and_resumed_sequences_give_the_same_text(request) -> None:
    from glassbox.provider import start_provider

    with start_provider("tinygpt", n_keys=2, max_batch=4) as small:
        first = openai.OpenAI(base_url=small.base_url, api_key=small.api_keys[0], max_retries=0)
        second = openai.OpenAI(base_url=small.base_url, api_key=small.api_keys[1], max_retries=0)
        prompts = [f"Story {i}: the nurse" for i in range(4)]
        alone = first.completions.create(model=small.model_name, prompt=prompts, max_tokens=100, temperature=0, logit_bias=NO_END)
        before = small.stats()["preemptions"]
        results: list[object] = []
        thread = threading.Thread(target=lambda: results.append(first.completions.create(
            model=small.model_name, prompt=prompts, max_tokens=100, temperature=0, logit_bias=NO_END)))
        thread.start()
        deadline = time.monotonic() + 60
        while small.stats()["active_sequences"] < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        other = second.completions.create(model=small.model_name, prompt=["The teacher", "The cook"], max_tokens=5,
                                          logit_bias=NO_END)
        thread.join(600)
        assert results, "the first key's request did not finish within 10 minutes"
        assert small.stats()["preemptions"] - before == 2  # the first key was paused down to its share (4 // 2)
        assert [choice.text for choice in results[0].choices] == [choice.text for choice in alone.choices]
        assert other.usage.completion_tokens == 10


def test_one_keys_backlog_does_not_hold_back_another_keys_request(provider) -> None:
    heavy = openai.OpenAI(base_url=provider.base_url, api_key=provider.api_keys[0], max_retries=0)
    light = openai.OpenAI(base_url=provider.base_url, api_key=provider.api_keys[1], max_retries=0)
    backlog = [f"Item {i}:" for i in range(640)]  # 10 batches of 64 sequences, 24 steps each
    marker = f"light request {time.monotonic_ns()}"
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(heavy.completions.create(
        model=provider.model_name, prompt=backlog, max_tokens=24, logit_bias=NO_END, user=marker)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while provider.stats()["pending_sequences"] < 256 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert provider.stats()["pending_sequences"] >= 256, "the backlog never formed"
        reply = light.completions.with_raw_response.create(model=provider.model_name, prompt="The nurse", max_tokens=4,
                                                           logit_bias=NO_END)
        light_entry = log_entry(provider, reply.headers["x-request-id"])
    finally:
        thread.join(900)
    assert not thread.is_alive(), "the backlog did not finish within 15 minutes"
    heavy_entry = next(entry for entry in reversed(provider.read_log()) if entry.get("parameters", {}).get("user") == marker)
    assert heavy_entry["queue_steps"] >= 5 * 24  # the backlog waited batches of 24 steps...
    assert light_entry["queue_steps"] <= 2  # ...the other key's request started within two steps
    assert light_entry["usage"]["completion_tokens"] == 4 and len(done[0].choices) == len(backlog)


# ----- 4. the request log ---------------------------------------------------------------------------


def test_without_a_key_a_long_path_fills_the_log_by_a_bounded_line(provider) -> None:
    before = provider.log_path.stat().st_size
    responses = [raw(provider, "GET", "/v1/" + "x" * 60_000, key=None) for _ in range(20)]
    assert {response.status_code for response in responses} == {401}
    entry = log_entry(provider, responses[-1].headers["x-request-id"])
    assert entry["path"].startswith("/v1/xxx") and len(entry["path"]) < 400 and "not logged" in entry["path"]
    assert entry["truncated"] == ["path"]
    assert provider.log_path.stat().st_size - before < 20 * 1024  # 1.2 MB of paths sent


def test_a_long_head_that_arrives_in_pieces_is_answered_like_one_that_arrives_whole(provider) -> None:
    # TCP may split a long head; h11 refused a head over 16 KiB only when it came in pieces (a plain
    # 400, the connection closed, no log line), so the same long URL got 401 or 400 by chance.
    from glassbox.provider.settings import MAX_HEAD_BYTES

    def send_in_pieces(path_length: int) -> bytes:
        head = b"GET /v1/" + b"x" * path_length + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", provider.port), timeout=30) as connection:
            connection.sendall(head[:-100])
            time.sleep(0.3)  # the server reads the first piece, all but the head's last 100 bytes, on its own
            connection.sendall(head[-100:])
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        return answer

    answer = send_in_pieces(60_000)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    request_id = re.search(rb"x-request-id: (\S+)", answer).group(1).decode()
    assert "not logged" in log_entry(provider, request_id)["path"]
    assert send_in_pieces(MAX_HEAD_BYTES + 1_000).startswith(b"HTTP/1.1 400")  # the stated bound holds


def test_long_prompts_are_cut_in_the_log_and_the_line_says_so(provider) -> None:
    prompts = ["word " * 20_000, *["short"] * 300]
    response = raw(provider, "POST", "/v1/completions", json={"model": provider.model_name, "prompt": prompts, "max_tokens": 1})
    assert response.status_code == 400  # too long for the context; logged all the same
    entry = log_entry(provider, response.headers["x-request-id"])
    assert "prompt" in entry["truncated"]
    assert entry["prompt"][0].startswith("word word") and len(entry["prompt"][0]) < MAX_FIELD_CHARS + 100
    assert len(entry["prompt"]) < len(prompts) and "more items not logged" in entry["prompt"][-1]
    for line in provider.log_path.read_bytes().splitlines():
        assert len(line) <= MAX_LINE_BYTES


def test_the_log_is_rotated_at_its_size_and_readable_by_its_owner_only(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path, max_bytes=20_000)
    for number in range(300):
        log.write({"request_id": f"req_{number}", "prompt": "p" * 200})
    log.close()
    old = path.with_name("requests.jsonl.1")
    assert path.stat().st_size <= 20_000 and old.stat().st_size <= 20_000
    assert read_log_file(path)[-1]["request_id"] == "req_299"
    for file in (path, old):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_the_class_servers_default_log_is_in_a_private_folder(tmp_path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "glassbox.provider", "--port", "0", "--model", "tinygpt"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_DIR,
                               stdin=subprocess.DEVNULL)
    try:
        log_path = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and log_path is None:
            line = process.stdout.readline()
            if not line:
                break
            if "request log:" in line:
                log_path = Path(line.split("request log:", 1)[1].strip())
        assert log_path is not None, "the server did not print its request log's place"
        assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700
        assert log_path.parent.name.startswith("glassbox-provider-log-")  # a fresh name (mkdtemp), not the port's
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
    if log_path is not None:
        import shutil

        shutil.rmtree(log_path.parent, ignore_errors=True)


# ----- 5. the class mode's socket -----------------------------------------------------------------------


def test_the_class_mode_socket_has_tcp_nodelay_on_every_connection() -> None:
    from glassbox.provider.__main__ import bind

    listener = bind("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    seen: list[int] = []

    async def serve() -> None:
        connected = asyncio.Event()

        class Recorder(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()
                connected.set()

        server = await asyncio.get_running_loop().create_server(Recorder, sock=listener)  # as uvicorn does
        async with server:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(connected.wait(), 10)
            writer.close()

    asyncio.run(serve())
    assert seen and seen[0] != 0


# ----- 6. the smaller items ---------------------------------------------------------------------------------


def test_bearer_and_a_tab_before_the_key_is_accepted(provider) -> None:
    response = raw(provider, "GET", "/v1/models", key=None, headers={"Authorization": f"Bearer\t{provider.api_key}"})
    assert response.status_code == 200
    assert raw(provider, "GET", "/v1/models", key=None, headers={"Authorization": "Bearer\tnot-a-key"}).status_code == 401


def test_a_keys_file_with_only_comments_is_refused(tmp_path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# the class of 2026\n\n# alice sk-alice-123456\n", encoding="utf-8")
    result = run_cli("--host", "0.0.0.0", "--port", "0", "--keys-file", str(keys), timeout=30)
    assert result.returncode == 2
    assert "holds no key (only blank lines and comments)" in result.stderr


def test_help_says_keys_on_the_command_line_show_in_ps_and_to_prefer_files() -> None:
    from glassbox.provider.__main__ import build_parser

    helps = {option: action.help for action in build_parser()._actions for option in action.option_strings}
    for flag, better in (("--admin-key", "--admin-key-file"), ("--api-key", "--keys-file")):
        assert "process list" in helps[flag] and better in helps[flag]


PARENT_SCRIPT = """
import sys, time
from glassbox.provider import start_provider
provider = start_provider("tinygpt")
print(provider.pid, provider._workdir, flush=True)
time.sleep(600)
"""


def test_the_keys_folder_is_removed_when_the_notebook_process_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT_SCRIPT)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_DIR, stdin=subprocess.DEVNULL)
    server_pid = None
    try:
        pid_text, folder_text = parent.stdout.readline().split()
        server_pid, folder = int(pid_text), Path(folder_text)
        assert (folder / "keys.txt").is_file() and (folder / "admin_key.txt").is_file()
        parent.send_signal(signal.SIGKILL)  # as a kernel restart does: no atexit, no with block
        parent.wait(10)
        assert wait_gone(server_pid, 20)
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folder.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        if server_pid is not None and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_connection_that_never_finishes_its_request_head_is_closed(provider) -> None:
    from glassbox.provider.settings import HEADER_TIMEOUT_SECONDS

    with socket.create_connection(("127.0.0.1", provider.port), timeout=HEADER_TIMEOUT_SECONDS * 4) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and then nothing
        try:
            assert connection.recv(1024) == b""  # closed by the server (a timeout here raises instead)
        except socket.timeout:
            pytest.fail(f"the connection was still open after {HEADER_TIMEOUT_SECONDS * 4:g} s")
    with socket.create_connection(("127.0.0.1", provider.port), timeout=10) as connection:  # a whole head is answered
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert connection.recv(1024).startswith(b"HTTP/1.1 200")
