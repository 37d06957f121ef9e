"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

That includes FastAPI's own validation errors (turned from 422 into OpenAI's 400 with the
offending ``param``), unknown paths (404), wrong methods (405) and anything unexpected
(500, without a traceback: the details go to the server's log only).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from glassbox.provider.schemas import FIELD_NAMES
from glassbox.provider.settings import LOGIT_BIAS_RANGE, MAX_LOGIT_BIAS, MAX_PROMPTS, MAX_STOP

logger = logging.getLogger("glassbox.provider")

#: Messages for fields whose type is a union (pydantic's own message names one branch only).
UNION_MESSAGES = {
    "prompt": f"'prompt' must be a string, a list of 1 to {MAX_PROMPTS:,} strings, a list of token ids, "
    f"or a list of 1 to {MAX_PROMPTS:,} lists of token ids (token ids are integers >= 0).",
    "stop": f"'stop' must be a string or a list of at most {MAX_STOP} strings.",
    "content": "A message's 'content' must be a string or a non-empty list of {\"type\": \"text\", \"text\": ...} parts "
    "(null content, images and audio are not supported).",
    "logit_bias": f"'logit_bias' must map token ids (as strings) to numbers from {LOGIT_BIAS_RANGE[0]} to "
    f"{LOGIT_BIAS_RANGE[1]}, with at most {MAX_LOGIT_BIAS} entries.",
}


class APIError(Exception):
    """An error to send to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return error_response(self.status, self.message, type=self.type, param=self.param, code=self.code, headers=self.headers)


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """A JSON response in OpenAI's error shape."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def param_from_location(location: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages[0].role"`` (pydantic's union branch names are dropped)."""
    parts = list(location)
    if len(parts) >= 2 and parts[0] in {"query", "path", "header"}:
        return str(parts[1])
    if parts and parts[0] == "body":
        parts = parts[1:]
    param = ""
    for index, part in enumerate(parts):
        if index > 0 and parts[index - 1] == "logit_bias":
            break  # a token id key: the param is 'logit_bias'
        if isinstance(part, int):
            param += f"[{part}]"
        elif isinstance(part, str) and part in FIELD_NAMES:
            param += ("." if param else "") + part
    return param or None


def _shown(value: Any) -> str:
    """A short, safe rendering of a rejected value for a message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(error: dict[str, Any], param: str | None) -> str:
    """One OpenAI-style sentence for one pydantic error."""
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    location = tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        name = location[-1] if location else "?"
        return f"Unrecognized request argument supplied: {name}"
    if kind == "missing":
        if location in {("body",), ()}:
            return "The request needs a JSON object body."
        return f"Missing required parameter: '{param}'."
    root = (param or "").split("[")[0].split(".")[0]
    leaf = (param or "").split(".")[-1]
    if leaf == "content" and root == "messages":
        return UNION_MESSAGES["content"] + f" (at '{param}')"
    if root in UNION_MESSAGES and kind not in {"too_long", "greater_than_equal", "less_than_equal"}:
        return UNION_MESSAGES[root]
    if kind == "literal_error" and leaf == "role":
        return f"Invalid value {_shown(error.get('input'))} for '{param}': a role must be 'system', 'developer', 'user' or 'assistant'."
    value = error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return f"Invalid value for '{param}': {message[0].lower() + message[1:]} (got {_shown(value)})."


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """The 400 for pydantic's errors (locations starting with "body", as FastAPI gives them): the first one is named."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    param = param_from_location(tuple(first.get("loc", ())))
    return APIError(400, validation_message(first, param), param=param,
                    code="invalid_value" if first.get("type") != "missing" else "missing_required_parameter")


async def _validation_handler(request: Request, exc: RequestValidationError) -> Response:
    return validation_error(list(exc.errors())).response()


async def _http_handler(request: Request, exc: StarletteHTTPException) -> Response:
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        return error_response(404, f"Invalid URL ({method} {path}).", code="unknown_url")
    if exc.status_code == 405:
        allowed = exc.headers.get("Allow", "") if exc.headers else ""
        extra = f" Use {allowed}." if allowed else ""
        return error_response(405, f"Method {method} is not allowed for {path}.{extra}", code="method_not_allowed",
                              headers={"Allow": allowed} if allowed else None)
    return error_response(exc.status_code, str(exc.detail), code=None)


async def _api_error_handler(request: Request, exc: APIError) -> Response:
    return exc.response()


async def _unexpected_handler(request: Request, exc: Exception) -> Response:
    logger.error("Unexpected error while serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "The server had an error while processing your request. Sorry about that!", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app can produce OpenAI-shaped."""
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]
    app.add_exception_handler(APIError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_handler)
