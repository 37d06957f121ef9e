"""The request bodies the provider accepts, as pydantic models (they also make its OpenAPI schema).

Types are strict, as OpenAI's are: ``"5"`` is not an integer and ``1.0`` is not a count.
Unknown fields are refused ("Unrecognized request argument supplied"). Checks that need
the model (context length, token ids in the vocabulary) are made in ``app.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from glassbox.provider.settings import (
    LOGIT_BIAS_MODES,
    LOGIT_BIAS_RANGE,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_N,
    MAX_PROMPTS,
    MAX_STOP,
    MAX_TOP_LOGPROBS,
)

_STRICT = ConfigDict(extra="forbid", strict=True)

Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False, description="0 picks the most likely token; higher is more random")]
TopP = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
BiasValue = Annotated[float, Field(ge=LOGIT_BIAS_RANGE[0], le=LOGIT_BIAS_RANGE[1], allow_inf_nan=False)]
LogitBias = Annotated[
    dict[str, BiasValue],
    Field(max_length=MAX_LOGIT_BIAS, description=f"token id (as a string) -> bias from {LOGIT_BIAS_RANGE[0]} to {LOGIT_BIAS_RANGE[1]}; at most {MAX_LOGIT_BIAS} entries"),
]
TokenId = Annotated[int, Field(ge=0)]
Stop = Union[str, Annotated[list[str], Field(max_length=MAX_STOP)]]
Prompt = Union[
    str,
    Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
    Annotated[list[TokenId], Field(min_length=1)],
    Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)],
]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: Optional[bool] = None


class CompletionRequest(BaseModel):
    """POST /v1/completions (OpenAI's legacy completions)."""

    model_config = _STRICT
    model: str
    prompt: Prompt = Field(description=f"a string, a list of up to {MAX_PROMPTS} strings, token ids, or lists of token ids; one choice per prompt")
    max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    temperature: Optional[Temperature] = None
    top_p: Optional[TopP] = None
    n: Optional[Annotated[int, Field(ge=1, le=MAX_N)]] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]] = None
    echo: Optional[bool] = None
    stop: Optional[Stop] = None
    presence_penalty: Optional[Penalty] = None
    frequency_penalty: Optional[Penalty] = None
    best_of: Optional[Annotated[int, Field(ge=1, le=MAX_N)]] = None
    logit_bias: Optional[LogitBias] = None
    seed: Optional[int] = None
    suffix: Optional[str] = None
    user: Optional[str] = None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, Annotated[list[TextPart], Field(min_length=1)]]
    name: Optional[str] = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = _STRICT
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    max_completion_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    temperature: Optional[Temperature] = None
    top_p: Optional[TopP] = None
    n: Optional[Annotated[int, Field(ge=1, le=MAX_N)]] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]] = None
    stop: Optional[Stop] = None
    presence_penalty: Optional[Penalty] = None
    frequency_penalty: Optional[Penalty] = None
    logit_bias: Optional[LogitBias] = None
    seed: Optional[int] = None
    user: Optional[str] = None


class SwapRequest(BaseModel):
    """POST /admin/swap (operator only)."""

    model_config = _STRICT
    variant: Annotated[str, Field(min_length=1, max_length=4096)]


class LogitBiasModeRequest(BaseModel):
    """POST /admin/logit_bias_mode (operator only)."""

    model_config = _STRICT
    mode: Literal[LOGIT_BIAS_MODES]  # type: ignore[valid-type]


class LimitsRequest(BaseModel):
    """POST /admin/limits (operator only): per-key requests and tokens per minute; null = unlimited."""

    model_config = _STRICT
    rpm: Optional[Annotated[int, Field(ge=1)]] = None
    tpm: Optional[Annotated[int, Field(ge=1)]] = None


#: Every field name of the bodies, to turn pydantic's error locations into OpenAI's `param`.
FIELD_NAMES = frozenset(
    name
    for model in (CompletionRequest, ChatCompletionRequest, ChatMessage, TextPart, StreamOptions, SwapRequest, LogitBiasModeRequest, LimitsRequest)
    for name in model.model_fields
)
