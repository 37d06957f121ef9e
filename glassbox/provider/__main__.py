"""Run the course's provider: ``python -m glassbox.provider --help``.

For a class (everyone on one machine's network, each learner with a key)::

    python -m glassbox.provider --model tinygpt --host 0.0.0.0 --port 8000 --keys-file keys.txt --rpm 60 --tpm 20000

Only standard-library modules are imported before the arguments are checked, so ``--help``
and mistakes in the arguments answer at once; the model is loaded after the port is bound,
so a port in use is reported before the wait.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

from glassbox.provider.settings import (
    ApiKey,
    DEFAULT_HOST,
    DEFAULT_LOGIT_BIAS_MODE,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_REQUEST_TOKENS,
    DEFAULT_PORT,
    DEFAULT_SERVED_NAME,
    DEFAULT_THREADS,
    HEADER_TIMEOUT_SECONDS,
    KeyFileError,
    LIMITS_TEXT,
    LOCAL_HOSTS,
    LOGIT_BIAS_MODES,
    MAX_HEAD_BYTES,
    check_key,
    check_keys,
    new_key,
    parse_keys_file,
    read_secret_file,
)

DESCRIPTION = """\
The Glass Box provider: an OpenAI-compatible HTTP API that serves one model under a
provider-style name, with API keys, rate limits, OpenAI-shaped errors and a request log.
Call it with the official openai client: OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY).

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions.
With --moderation FILE: POST /v1/moderations, and flagged prompts/replies are blocked.
Operator only (the admin key): POST /admin/keys/LABEL/revoke, POST /admin/swap {"variant": "int8"|"fp16"|"bf16"|"original"|<model name or folder>},
GET|POST /admin/logit_bias_mode, GET|POST /admin/limits, GET /admin/log, GET /admin/stats.
"""

EPILOG = LIMITS_TEXT + """
keys file: one key per line, or "label key" (the label is what the request log shows);
blank lines and lines starting with # are ignored. Keys given with --api-key are visible
to other users of this machine in the process list; a keys file is not.

chat format: messages become "System: ...", "User: ...", "Assistant: ..." lines and the
prompt ends with "Assistant:"; the reply stops at the next turn (see glassbox/provider/chat.py).

logprobs are log_softmax of the raw logits at temperature 1. --logit-bias-mode pre-2024
adds logit_bias to them (OpenAI before March 2024: the Carlini et al. 2024 attack works);
post-2024 leaves them unbiased (the bias still changes which tokens are sampled).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glassbox.provider",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None,
                        help="the weights to serve: tinygpt, gpt2, gpt2-medium, gpt2-untrained, ... or a model folder "
                             "(default: what load_model() chooses: GLASSBOX_MODEL, else gpt2 if it can be had, else tinygpt)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}, this machine only); any other address "
                             "(e.g. 0.0.0.0 for a class) needs at least one API key")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="a learner key (repeat for several: key-1, key-2, ... in the log). Without any key, on "
                             "127.0.0.1 one is made up and printed. Visible to every user of this machine in the "
                             "process list (ps): prefer --keys-file")
    parser.add_argument("--keys-file", type=Path, metavar="FILE", help="learner keys, one per line or 'label key' per line")
    parser.add_argument("--admin-key", metavar="KEY",
                        help="the operator's key for /admin (never a learner's; default: made up and printed). Visible "
                             "to every user of this machine in the process list (ps): prefer --admin-key-file")
    parser.add_argument("--admin-key-file", type=Path, metavar="FILE",
                        help="a file holding the admin key (first line): the safe way to give it")
    parser.add_argument("--rpm", type=int, default=None, metavar="N", help="requests per minute per key (default: unlimited)")
    parser.add_argument("--tpm", type=int, default=None, metavar="N",
                        help="tokens per minute per key, counted as what the model computes: prompts x n x "
                             "(prompt tokens + max_tokens) (default: unlimited)")
    parser.add_argument("--max-request-tokens", type=int, default=DEFAULT_MAX_REQUEST_TOKENS, metavar="N",
                        help="the most one request may make the model compute, counted as for --tpm, for every key "
                             f"(default {DEFAULT_MAX_REQUEST_TOKENS:,}; 400 request_too_large beyond)")
    parser.add_argument("--logit-bias-mode", choices=LOGIT_BIAS_MODES, default=DEFAULT_LOGIT_BIAS_MODE,
                        help=f"whether returned logprobs include logit_bias (default {DEFAULT_LOGIT_BIAS_MODE}; see below)")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="the request log, JSON lines, readable by its owner only, lines bounded, rotated at 64 MiB "
                             "to FILE.1 (default: requests.jsonl in a new private folder of the temporary directory, "
                             "printed at start)")
    parser.add_argument("--moderation", type=Path, metavar="FILE",
                        help="a moderation policy (JSON: categories of weighted regular expressions; see "
                             "glassbox/provider/moderation.py): checks prompts and replies and serves POST /v1/moderations")
    parser.add_argument("--served-name", default=DEFAULT_SERVED_NAME, metavar="NAME",
                        help=f"the model name clients send and /v1/models shows (default {DEFAULT_SERVED_NAME})")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                        help=f"sequences generated together in one forward pass (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help=f"CPU threads torch may use (default {DEFAULT_THREADS}: on a shared or busy machine more threads "
                             "can make torch many times slower; on a machine of its own with several cores, try more)")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="stop when this process ends (start_provider passes its own id, so no server outlives its notebook)")
    parser.add_argument("--fd", type=int, metavar="FD",
                        help="serve on this already-listening socket (start_provider binds the port and passes it)")
    parser.add_argument("--cleanup-dir", type=Path, metavar="DIR",
                        help="remove this folder if the process given by --parent-pid dies (start_provider passes "
                             "its temporary folder, which holds the keys)")
    return parser


def fail(message: str, code: int = 2) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return code


def collect_keys(args: argparse.Namespace) -> tuple[list[ApiKey], str, bool, bool]:
    """(learner keys, admin key, learner key made up?, admin key made up?). Raises KeyFileError."""
    keys = [ApiKey(f"key-{number}", check_key(secret, "--api-key")) for number, secret in enumerate(args.api_key, start=1)]
    if args.keys_file:
        for key in parse_keys_file(args.keys_file):
            label = key.key_id if not key.key_id.startswith("key-") else f"key-{len(keys) + 1}"
            keys.append(ApiKey(label, key.secret))
    made_admin = False
    if args.admin_key:
        admin = check_key(args.admin_key, "--admin-key")
    elif args.admin_key_file:
        admin = read_secret_file(args.admin_key_file)
    else:
        admin, made_admin = new_key("sk-glassbox-admin-"), True
    made_learner = False
    if not keys:
        keys, made_learner = [ApiKey("key-1", new_key())], True
    check_keys(keys, admin)
    return keys, admin, made_learner, made_admin


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (raises OSError with the reason).

    It is made with protocol ``IPPROTO_TCP`` (not 0) and ``TCP_NODELAY``: asyncio sets
    ``TCP_NODELAY`` on an accepted connection only when the listening socket says TCP, and
    without it every response on a reused connection waited ~40 ms for Nagle's algorithm.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock = socket.socket(infos[0][0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(infos[0][4])
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.parent_pid:
        from glassbox.provider.lifeline import watch_parent

        watch_parent(args.parent_pid, cleanup=args.cleanup_dir)
    for name in ("rpm", "tpm", "max_batch", "threads", "max_request_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return fail(f"--{name.replace('_', '-')} must be a positive whole number (leave --rpm/--tpm out for no limit).")
    if not 0 <= args.port <= 65535:
        return fail(f"--port must be between 0 and 65535, not {args.port}.")
    local = args.host in LOCAL_HOSTS
    if not local and not (args.api_key or args.keys_file):
        return fail(f"refusing to listen on {args.host} without an API key: anyone who can reach this machine could use "
                    "the model. Give --api-key KEY (repeatable) "
                    "or --keys-file FILE, or use --host 127.0.0.1.")
    try:
        keys, admin_key, made_learner, made_admin = collect_keys(args)
    except KeyFileError as error:
        return fail(str(error))
    policy = None
    if args.moderation is not None:
        from glassbox.provider.moderation import PolicyError, load_policy

        try:
            policy = load_policy(args.moderation)
        except PolicyError as error:
            return fail(str(error))
    if args.model and ("/" in args.model or os.sep in args.model or args.model.startswith((".", "~"))):
        folder = Path(args.model).expanduser()
        if not folder.is_dir():  # checked here, before the slow imports, so the answer comes at once
            return fail(f"cannot load the model: the model folder {args.model} does not exist. Give a folder holding "
                        "config.json and model.safetensors, or a name such as tinygpt, gpt2 or gpt2-untrained.", code=1)

    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        try:
            sock = bind(args.host, args.port)
        except OSError as error:
            reason = "it is already in use (another provider? stop it, or choose another --port)" if error.errno in (98, 48, 10048) else error.strerror or str(error)
            return fail(f"cannot listen on {args.host}:{args.port}: {reason}.", code=1)
    port = sock.getsockname()[1]
    # default: a private folder (mode 0700, a name nobody can guess) and a file only its owner reads (0600)
    log_path = args.log_file or Path(tempfile.mkdtemp(prefix="glassbox-provider-log-")) / "requests.jsonl"

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    from glassbox.loader import ModelLoadError
    from glassbox.provider.engine import Engine

    try:
        engine = Engine(args.model, max_batch=args.max_batch)
    except ModelLoadError as error:
        sock.close()
        return fail(f"cannot load the model: {error}", code=1)

    import uvicorn

    from glassbox.provider.app import create_app
    from glassbox.provider.gatekeeper import KeyStore
    from glassbox.provider.ratelimit import RateLimiter
    from glassbox.provider.requestlog import RequestLog

    log = RequestLog(log_path)
    app = create_app(engine, keys=KeyStore(keys, admin_key), served_name=args.served_name,
                     limiter=RateLimiter(args.rpm, args.tpm, args.max_request_tokens), log=log, logit_bias_mode=args.logit_bias_mode,
                     moderation=policy)
    shown_host = "127.0.0.1" if args.host in {"0.0.0.0", "::"} else args.host
    print(f"Glass Box provider: serving {args.served_name!r} at http://{shown_host}:{port}/v1", flush=True)
    print(f"  weights (operator only): {engine.base_name}; logit_bias mode {args.logit_bias_mode}; "
          f"limits per key: {args.rpm or 'unlimited'} requests/min, {args.tpm or 'unlimited'} tokens/min; "
          f"{args.threads} torch thread(s)", flush=True)
    print(f"  learner keys: {len(keys)} ({', '.join(key.key_id for key in keys[:5])}{', ...' if len(keys) > 5 else ''})", flush=True)
    if made_learner:
        print(f"  learner key (made up for this run): {keys[0].secret}", flush=True)
    if made_admin:
        print(f"  admin key (made up for this run):   {admin_key}", flush=True)
    if policy is not None:
        print(f"  moderation: {len(policy.categories)} categories on {' and '.join(sorted(policy.apply_to))} "
              f"(/v1/moderations answers as {policy.model!r})", flush=True)
    print(f"  request log: {log_path}", flush=True)
    if args.api_key or args.admin_key:
        print("  note: keys given with --api-key or --admin-key are visible to every user of this machine in the process "
              "list (ps); --keys-file and --admin-key-file are not", flush=True)
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning", access_log=False, lifespan="on",
                            http=head_timeout_protocol(HEADER_TIMEOUT_SECONDS), ws="none", timeout_graceful_shutdown=3,
                            backlog=2048, timeout_keep_alive=5, h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        log.close()
    return 0


def head_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request head has not arrived whole within ``seconds``.

    uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but has no limit on
    a request head that arrives slowly, so clients sending half a head held connections open
    for as long as they liked. The clock starts when the connection opens, or when the first
    bytes of a next request arrive; a whole head stops it (then the body has its own limit,
    ``BODY_TIMEOUT_SECONDS``, in the gatekeeper).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer = None  # an asyncio.TimerHandle while the clock runs

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_head_timer()  # a whole head has arrived: a request is being answered
            elif self._head_timer is None and not self.transport.is_closing():
                self._arm_head_timer()  # the first bytes of a (next) head

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol


if __name__ == "__main__":
    sys.exit(main())
