"""What every request passes before it reaches a route: keys, body size, JSON, request id, the log.

A pure ASGI middleware (so streaming responses pass straight through):

* gives every response an ``x-request-id`` and ``openai-processing-ms``;
* ``/v1/...`` needs a learner or the admin key (401 ``invalid_api_key`` otherwise);
  ``/admin/...`` needs the admin key (401 without a valid key, 403 ``permission_denied``
  with a learner's key). Keys are compared in constant time and never logged or echoed;
* cheap checks come first, so a rejected request costs the server little and the key one
  request: the key, then the key's request budget (``--rpm``: 429 before the body is
  even read), then the body's size;
* a JSON body larger than ``MAX_BODY_BYTES`` gets 413 (both the declared Content-Length
  and the bytes actually received are checked), one not received within
  ``BODY_TIMEOUT_SECONDS`` gets 408; a body that is not JSON, not an object, nested deeper
  than ``MAX_JSON_DEPTH`` or holding a lone surrogate (``"\\ud800"``: valid JSON, not valid
  Unicode) gets 400 naming the field;
* the expensive checks (parsing a large body, the request schema of the generation
  endpoints) run in a worker thread, never on the event loop that answers everyone;
* writes one line to the request log when the response is complete (always: see
  ``requestlog.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import MutableHeaders

from glassbox.provider.errors import APIError, validation_error
from glassbox.provider.ratelimit import REQUEST_JOBS, REQUEST_KEY, RateLimiter
from glassbox.provider.requestlog import RequestLog
from glassbox.provider.schemas import ChatCompletionRequest, CompletionRequest
from glassbox.provider.settings import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES, MAX_JSON_DEPTH, ApiKey

logger = logging.getLogger("glassbox.provider")

PROTECTED = ("/v1", "/admin")
JSON_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/moderations", "/admin/swap", "/admin/logit_bias_mode", "/admin/limits", "/admin/system_fingerprint"})
NOT_LOGGED = frozenset({"/health", "/admin/log", "/admin/stats", "/openapi.json"})
DRAIN_LIMIT = 32 * 1024 * 1024  #: read (and drop) at most this much of a too-large body, so the client sees the 413
#: Bodies checked against their schema here, in a worker thread (the route checks them again: cheap once valid).
SCHEMAS: dict[str, type[BaseModel]] = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
INLINE_BYTES = 16 * 1024  #: smaller bodies are checked on the event loop (a thread hop would cost more)
MAX_LOGGED_PATH = 256  #: characters of the path kept in the request log
_SURROGATE = re.compile("[\ud800-\udfff]")


class KeyStore:
    """The learner keys and the admin key; :meth:`identify` compares in constant time."""

    def __init__(self, keys: list[ApiKey], admin_key: str) -> None:
        self._keys = [(key.key_id, key.secret.encode("latin-1")) for key in keys]
        self._admin = admin_key.encode("latin-1")
        self._revoked: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def revoke(self, key_id: str) -> bool:
        """Remove the learner key labelled ``key_id`` (its next request gets 401). False if no such label.

        Revoking a label already revoked is allowed and changes nothing (True).
        """
        if key_id in self._revoked:
            return True
        kept = [(label, secret) for label, secret in self._keys if label != key_id]
        if len(kept) == len(self._keys):
            return False
        self._keys = kept
        self._revoked.add(key_id)
        return True

    def identify(self, presented: bytes) -> tuple[str | None, bool]:
        """``(key_id, is_admin)`` for a presented key; ``(None, False)`` if it matches none.

        Every key is compared (no early exit), each with ``hmac.compare_digest``.
        """
        found = None
        for key_id, secret in self._keys:
            if hmac.compare_digest(presented, secret):
                found = key_id
        if hmac.compare_digest(presented, self._admin):
            return "admin", True
        return found, False


def _protected(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTECTED)


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if ``value`` nests lists/objects more than ``limit`` levels deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def find_surrogate(value: Any) -> str | None:
    """The field (named as OpenAI does: ``messages[0].content``) of the first string or key holding a lone surrogate."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where or "body"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if where.endswith("logit_bias"):
                    path = where  # a token id: the field is logit_bias itself
                else:
                    path = (f"{where}." if where else "") + key.encode("utf-8", "backslashreplace").decode("utf-8")
                if _SURROGATE.search(key):
                    return path
                children.append((child, path))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{where}[{index}]") for index, child in enumerate(item)]))
    return None


def check_body(raw: bytes, path: str) -> tuple[dict[str, Any] | None, APIError | None]:
    """Parse a JSON body and check it: an object, not too deep, no lone surrogate, and the endpoint's schema.

    Returns ``(data, None)``, or ``(data or None, the error)``. Thread-safe: large bodies are checked in a worker thread.
    """
    if not raw.strip():
        return None, APIError(400, "The request body is empty: send a JSON object.", code="invalid_json")
    try:
        data = json.loads(raw)
    except RecursionError:
        return None, APIError(400, f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).", code="invalid_json")
    except ValueError as error:  # includes UnicodeDecodeError and the int-digits limit
        return None, APIError(400, f"We could not parse the JSON body of your request ({str(error)[:120]}). Send a JSON "
                              "object, e.g. with the openai client or requests' json=...", code="invalid_json")
    if not isinstance(data, dict):
        return None, APIError(400, "The request body must be a JSON object, not "
                              f"{type(data).__name__ if data is not None else 'null'}.", code="invalid_json")
    if too_deep(data):
        return None, APIError(400, f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).", code="invalid_json")
    where = find_surrogate(data)
    if where is not None:
        return data, APIError(400, f"Invalid value for '{where}': it holds a lone surrogate (such as \\ud800), which is valid "
                              "JSON but not Unicode text, so it cannot be read. Send the character itself, or a whole "
                              "surrogate pair.", param=where, code="invalid_value")
    schema = SCHEMAS.get(path)
    if schema is not None:
        try:
            schema.model_validate(data)
        except ValidationError as error:
            return data, validation_error([{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)])
    return data, None


class Gatekeeper:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: Any, keys: KeyStore, log: RequestLog | None, limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.keys = keys
        self.log = log
        self.limiter = limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context: dict[str, Any] = {"request_id": "req_" + secrets.token_hex(16), "key_id": None, "admin": False,
                                   "status": None, "log": {}, "ratelimit": {}}
        scope["glassbox"] = context
        path, method = scope.get("path", ""), scope.get("method", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                context["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = context["request_id"]
                headers["openai-processing-ms"] = str(int((time.perf_counter() - started) * 1000))
                for name, value in context["ratelimit"].items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            rejection = self._authenticate(scope, path, context)
            if rejection is None:
                rejection = self._take_request(path, context)
            if rejection is None and method == "POST" and path in JSON_PATHS:
                rejection, receive = await self._read_json(scope, receive, context)
            if rejection is not None:
                context["log"]["error"] = rejection.code
                await rejection.response()(scope, receive, send_with_headers)
                return
            REQUEST_KEY.set(context["key_id"])  # the engine queues this request's sequences under its key
            REQUEST_JOBS.set(context.setdefault("jobs", []))
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.log is not None and path not in NOT_LOGGED and context["status"] is not None:
                self._write_log(context, method, path, started)

    def _write_log(self, context: dict[str, Any], method: str, path: str, started: float) -> None:
        """The request's log line. Never raises: the answer has gone out, and the connection must not be dropped."""
        entry = {
            "request_id": context["request_id"],
            "key_id": context["key_id"],
            "method": method,
            "path": path,
            "status": context["status"],
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            **context["log"],
        }
        waits = [job.queue_steps() for job in context.get("jobs", [])]
        if waits:
            entry["queue_steps"] = max(waits)  # engine steps its sequences waited before they started (fairness)
        if len(path) > MAX_LOGGED_PATH:
            entry["path"] = f"{path[:MAX_LOGGED_PATH]}...[{len(path) - MAX_LOGGED_PATH:,} more characters not logged]"
            entry["truncated"] = ["path"]
        try:
            self.log.write(entry)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a full disk, say: tell the operator, keep serving
            logger.exception("Could not write the request log line of %s", context["request_id"])

    def _take_request(self, path: str, context: dict) -> APIError | None:
        """A learner's request to /v1 takes one from the key's request budget now, before anything costly.

        So a request that is then refused (invalid, too large) still counts. The admin key has no limit.
        """
        if self.limiter is None or context["admin"] or context["key_id"] is None or not (path == "/v1" or path.startswith("/v1/")):
            return None
        try:
            context["ratelimit"] = self.limiter.take_request(context["key_id"])
        except APIError as error:
            return error
        return None

    def _authenticate(self, scope: dict, path: str, context: dict) -> APIError | None:
        if not _protected(path):
            return None
        authorization = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value
        parts = authorization.split(None, 1)  # "Bearer", then any spaces or tabs (RFC 9110), then the key
        scheme, presented = (parts[0], parts[1].strip()) if len(parts) == 2 else (b"", b"")
        if not authorization or scheme.lower() != b"bearer" or not presented:
            return APIError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                            "(Authorization: Bearer YOUR_KEY); the openai client does this when you give api_key.",
                            code="invalid_api_key")
        key_id, admin = self.keys.identify(presented)
        if key_id is None:
            return APIError(401, "Incorrect API key provided. Check the key you were given (it is not repeated here).",
                            code="invalid_api_key")
        context["key_id"], context["admin"] = key_id, admin
        if (path == "/admin" or path.startswith("/admin/")) and not admin:
            return APIError(403, "This key may not use the operator's controls (/admin needs the admin key).",
                            code="permission_denied")
        return None

    async def _read_json(self, scope: dict, receive: Any, context: dict) -> tuple[APIError | None, Any]:
        """Read the body within the size and time limits, check it (off the event loop if large), and replay it to the app."""
        too_large = APIError(413, f"The request body is too large: the limit is {MAX_BODY_BYTES:,} bytes.", code="request_too_large")
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return APIError(400, "The Content-Length header is not a number.", code="invalid_request"), receive
        body = bytearray()
        received = 0
        more = True
        exceeded = declared is not None and declared > MAX_BODY_BYTES
        deadline = time.monotonic() + BODY_TIMEOUT_SECONDS
        while more and received <= (DRAIN_LIMIT if exceeded else MAX_BODY_BYTES):
            try:
                message = await asyncio.wait_for(receive(), max(0.001, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return APIError(408, f"The request body did not arrive whole within {BODY_TIMEOUT_SECONDS:g} seconds.",
                                code="request_timeout"), receive
            if message["type"] == "http.disconnect":
                return APIError(400, "The client disconnected while sending the body.", code="client_disconnected"), receive
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > MAX_BODY_BYTES:
                exceeded = True
            if not exceeded:
                body += chunk
            more = message.get("more_body", False)
        if exceeded or more:
            return too_large, receive
        path = scope.get("path", "")
        raw = bytes(body)
        if len(raw) > INLINE_BYTES:  # parsing and checking a large body takes a while: not on the event loop
            data, problem = await asyncio.to_thread(check_body, raw, path)
        else:
            data, problem = check_body(raw, path)
        if data is not None:
            context["log"].update(_loggable(path=path, body=data))
        if problem is not None:
            return problem, receive
        headers = [(name, value) for name, value in scope.get("headers", []) if name != b"content-type"]
        scope["headers"] = [*headers, (b"content-type", b"application/json")]
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return None, replay


def _loggable(path: str, body: dict) -> dict[str, Any]:
    """What the request log keeps of a body: the model asked for, the prompt or messages, the rest."""
    entry: dict[str, Any] = {}
    if path.startswith("/admin/"):
        return {"parameters": body}
    entry["model"] = body.get("model")
    if "prompt" in body:
        entry["prompt"] = body["prompt"]
    if "messages" in body:
        entry["messages"] = body["messages"]
    entry["parameters"] = {key: value for key, value in body.items() if key not in {"model", "prompt", "messages"}}
    return entry
