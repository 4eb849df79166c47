"""OpenAI's shapes for `polo serve`: the request models, the fields it refuses (UNSUPPORTED), ApiError
(OpenAI's error body), and the pieces of a response (server-sent event, finish_reason, usage)."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import inference

# ---------------------------------------------------------------- requests (OpenAI fields)

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def _off(*values) -> Callable[[Any], bool]:
    return lambda v: v in values


def _empty(v) -> bool:
    return not v


def _text_format(v) -> bool:
    return v is None or (isinstance(v, dict) and v.get("type") == "text")


# OpenAI fields this server cannot honour: the values that ask nothing of it, and what it lacks.
# Any other value is refused with a 400 naming the field, never silently ignored.
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (_off(None, False), "it returns no log probabilities"),
    "top_logprobs": (_off(None, 0), "it returns no log probabilities"),
    "echo": (_off(None, False), "it does not echo the prompt"),
    "suffix": (_off(None, ""), "it does not fill in between a prompt and a suffix"),
    "best_of": (_off(None, 1), "it does not rank answers; ask for n answers instead"),
    "logit_bias": (_empty, "it does not bias tokens"),
    "frequency_penalty": (_off(None, 0, 0.0), "it applies no frequency penalty"),
    "presence_penalty": (_off(None, 0, 0.0), "it applies no presence penalty"),
    "tools": (_empty, "it does not call tools"),
    "functions": (_empty, "it does not call functions"),
    "tool_choice": (_off(None, "none", "auto"), "it does not call tools"),
    "function_call": (_off(None, "none", "auto"), "it does not call functions"),
    "response_format": (_text_format, "it answers in plain text only (no JSON mode or schema)"),
    "audio": (_off(None), "it answers in text only"),
    "modalities": (_off(None, ["text"]), "it answers in text only"),
    "prediction": (_off(None), "it does not take predicted outputs"),
    "web_search_options": (_off(None), "it does not search the web"),
    "reasoning_effort": (_off(None), "the model does not reason in a separate channel"),
}


class _Sampling(BaseModel):
    """The fields both endpoints share; other fields are accepted and ignored (user, metadata, store,
    ...) unless UNSUPPORTED names them."""
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None or 0: greedy, as evaluation decodes
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def unsupported(self) -> list[str]:
        extra = self.model_extra or {}
        return [f"{name} ({why})" for name, (harmless, why) in UNSUPPORTED.items()
                if name in extra and not harmless(extra[name])]


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class ApiError(Exception):
    """A 4xx/5xx in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers, content=self.body())


def _timeout_error(limit_s: float) -> ApiError:
    return ApiError(504, f"no answer within the server's limit of {limit_s:g} s per request (it is busy, or "
                         "max_tokens is large for this machine); retry, or ask for fewer tokens.",
                    type_="server_error", code="timeout")


# ---------------------------------------------------------------- responses

def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _finish_reason(gen: inference.Generation) -> str:
    """OpenAI's: "length" for an answer cut at max_tokens, "stop" for one that ended (EOS, a stop string)."""
    return "length" if gen.cut else "stop"


def _usage(prompt_tokens: int, gens: list[inference.Generation]) -> dict[str, int]:
    completion = sum(g.new_tokens for g in gens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
