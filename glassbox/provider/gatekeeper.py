"""What every request passes before it reaches a route: keys, body size, JSON, request id, the log.

A pure ASGI middleware (so streaming responses pass straight through):

* gives every response an ``x-request-id`` and ``openai-processing-ms``;
* ``/v1/...`` needs a learner or the admin key (401 ``invalid_api_key`` otherwise);
  ``/admin/...`` needs the admin key (401 without a valid key, 403 ``permission_denied``
  with a learner's key). Keys are compared in constant time and never logged or echoed;
* a JSON body larger than ``MAX_BODY_BYTES`` gets 413 (both the declared Content-Length
  and the bytes actually received are checked); a body that is not JSON, not an object,
  or nested deeper than ``MAX_JSON_DEPTH`` gets 400;
* writes one line to the request log when the response is complete.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from typing import Any

from starlette.datastructures import MutableHeaders

from glassbox.provider.errors import error_response
from glassbox.provider.requestlog import RequestLog
from glassbox.provider.settings import MAX_BODY_BYTES, MAX_JSON_DEPTH, ApiKey

PROTECTED = ("/v1", "/admin")
JSON_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/admin/swap", "/admin/logit_bias_mode", "/admin/limits", "/admin/system_fingerprint"})
NOT_LOGGED = frozenset({"/health", "/admin/log", "/admin/stats", "/openapi.json"})
DRAIN_LIMIT = 32 * 1024 * 1024  #: read (and drop) at most this much of a too-large body, so the client sees the 413


class KeyStore:
    """The learner keys and the admin key; :meth:`identify` compares in constant time."""

    def __init__(self, keys: list[ApiKey], admin_key: str) -> None:
        self._keys = [(key.key_id, key.secret.encode("latin-1")) for key in keys]
        self._admin = admin_key.encode("latin-1")

    def __len__(self) -> int:
        return len(self._keys)

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


class Gatekeeper:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: Any, keys: KeyStore, log: RequestLog | None) -> None:
        self.app = app
        self.keys = keys
        self.log = log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context: dict[str, Any] = {"request_id": "req_" + secrets.token_hex(16), "key_id": None, "admin": False,
                                   "status": None, "log": {}}
        scope["glassbox"] = context
        path, method = scope.get("path", ""), scope.get("method", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                context["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = context["request_id"]
                headers["openai-processing-ms"] = str(int((time.perf_counter() - started) * 1000))
            await send(message)

        try:
            rejection = self._authenticate(scope, path, context)
            if rejection is None and method == "POST" and path in JSON_PATHS:
                rejection, receive = await self._read_json(scope, receive, context)
            if rejection is not None:
                context["log"]["error"] = rejection[2]
                await error_response(rejection[0], rejection[1], code=rejection[2], type=rejection[3])(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.log is not None and path not in NOT_LOGGED and context["status"] is not None:
                self.log.write({
                    "request_id": context["request_id"],
                    "key_id": context["key_id"],
                    "method": method,
                    "path": path,
                    "status": context["status"],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    **context["log"],
                })

    def _authenticate(self, scope: dict, path: str, context: dict) -> tuple[int, str, str, str] | None:
        if not _protected(path):
            return None
        authorization = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value
        scheme, _, presented = authorization.strip().partition(b" ")
        presented = presented.strip()
        if not authorization or scheme.lower() != b"bearer" or not presented:
            return (401, "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                    "(Authorization: Bearer YOUR_KEY); the openai client does this when you give api_key.",
                    "invalid_api_key", "invalid_request_error")
        key_id, admin = self.keys.identify(presented)
        if key_id is None:
            return (401, "Incorrect API key provided. Check the key you were given (it is not repeated here).",
                    "invalid_api_key", "invalid_request_error")
        context["key_id"], context["admin"] = key_id, admin
        if (path == "/admin" or path.startswith("/admin/")) and not admin:
            return (403, "This key may not use the operator's controls (/admin needs the admin key).",
                    "permission_denied", "invalid_request_error")
        return None

    async def _read_json(self, scope: dict, receive: Any, context: dict) -> tuple[tuple | None, Any]:
        """Read the body within the size limit, check it is a JSON object, and replay it to the app."""
        too_large = (413, f"The request body is too large: the limit is {MAX_BODY_BYTES:,} bytes.",
                     "request_too_large", "invalid_request_error")
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return (400, "The Content-Length header is not a number.", "invalid_request", "invalid_request_error"), receive
        body = bytearray()
        received = 0
        more = True
        exceeded = declared is not None and declared > MAX_BODY_BYTES
        while more and received <= (DRAIN_LIMIT if exceeded else MAX_BODY_BYTES):
            message = await receive()
            if message["type"] == "http.disconnect":
                return (400, "The client disconnected while sending the body.", "client_disconnected", "invalid_request_error"), receive
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > MAX_BODY_BYTES:
                exceeded = True
            if not exceeded:
                body += chunk
            more = message.get("more_body", False)
        if exceeded or more:
            return too_large, receive
        if not body.strip():
            return (400, "The request body is empty: send a JSON object.", "invalid_json", "invalid_request_error"), receive
        try:
            data = json.loads(bytes(body))
        except RecursionError:
            return (400, f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).", "invalid_json",
                    "invalid_request_error"), receive
        except ValueError as error:  # includes UnicodeDecodeError and the int-digits limit
            return (400, f"We could not parse the JSON body of your request ({str(error)[:120]}). Send a JSON object, "
                    "e.g. with the openai client or requests' json=...", "invalid_json", "invalid_request_error"), receive
        if not isinstance(data, dict):
            return (400, f"The request body must be a JSON object, not {type(data).__name__ if data is not None else 'null'}.",
                    "invalid_json", "invalid_request_error"), receive
        if too_deep(data):
            return (400, f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).", "invalid_json",
                    "invalid_request_error"), receive
        context["log"].update(_loggable(path=scope.get("path", ""), body=data))
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
