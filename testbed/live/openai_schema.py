"""OpenAI-compatible request models and error bodies, shared by the replicas and the gateway.

Requests are parsed from raw bytes with :func:`parse_request` rather than by a web framework, so
the gateway (or anything else) validates exactly as the replicas do, and every failure becomes
one :class:`RequestError`: an HTTP status and an OpenAI-style body whose message names the
field, what was expected and what was given — never a framework's default 422 shape.

Unknown fields are ignored, as vLLM does: clients send options (``user``, ``seed``,
``logit_bias``...) that a greedy CPU engine has no use for. Sampling fields are validated but
generation is greedy: with random weights, sampling would only add noise to measurements.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_SEQUENCES = 4


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API answers errors."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


PositiveInt = Annotated[int, Field(strict=True, ge=1)]
Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
Temperature = Annotated[float, Field(strict=True, ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(strict=True, ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, strict=True)


class _Common(BaseModel):
    """Fields both endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, strict=True)
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=1)] = 1
    temperature: Temperature | None = None
    top_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # vLLM's extension (>= 0.10.2): the prompt's token ids in the first chunk (or the answer) and
    # each chunk's generated ids — what the gateway needs to resume a broken stream elsewhere.
    return_token_ids: bool | None = Field(None, strict=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in value):
            return value
        raise ValueError(f"expected a string or a list of at most {MAX_STOP_SEQUENCES} strings")

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: str | list[int] | list[str]
    max_tokens: PositiveInt = 16

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(type(v) is int for v in value):
            return value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value
        if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) for v in value):
            raise ValueError("one prompt per request is supported; send the prompts as separate requests")
        raise ValueError("expected a string, a non-empty list of token ids, or a list holding one string")

    @property
    def prompt_text(self) -> str | None:
        """The prompt as text, or None when it was given as token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if isinstance(self.prompt[0], str) else None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = Field(strict=True)


class ChatMessage(BaseModel):
    """One message; its ``content`` is required, as OpenAI requires it (no tool calls here)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, str) or isinstance(value, list):
            return value  # list items are then validated as text parts, each with its own path
        raise ValueError("expected a string or a list of text parts")

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None

    @property
    def token_budget(self) -> int:
        """``max_completion_tokens`` (the newer name) over ``max_tokens``; 16 if neither is set."""
        return self.max_completion_tokens or self.max_tokens or 16


T = TypeVar("T", bound=BaseModel)


def parse_request(model: type[T], body: bytes) -> T:
    """Validate a JSON request body; any problem raises one :class:`RequestError` (status 400)."""
    if not body.strip():
        raise RequestError("the request body is empty: expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise RequestError(message, param=param) from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """One readable line for the first problems, and the path of the first bad field."""
    parts: list[str] = []
    first_param: str | None = None
    for error in exc.errors(include_url=False)[:3]:
        if error["type"] == "json_invalid":
            return f"the request body is not valid JSON: {error['ctx'].get('error', error['msg'])}", None
        path = _path(error["loc"])
        if not path:
            parts.append(f"the request body must be a JSON object, got {_shown(error.get('input'))}")
            continue
        first_param = first_param or path
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"{path}: required field is missing")
        else:
            parts.append(f"{path}: {message}, got {_shown(error.get('input'))}")
    return "; ".join(parts), first_param


def _path(loc: tuple) -> str:
    """``('messages', 0, 'role')`` -> ``messages[0].role``; union-member tags are dropped."""
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in _UNION_TAGS or "[" in item:
            continue
        else:
            out += f".{item}" if out else item
    return out


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "TextPart", "StreamOptions"}


def _shown(value: Any) -> str:
    """A short rendering of an offending value (hostile inputs can be megabytes)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def install_error_handlers(app: Any) -> None:
    """Make every error ``app`` (a FastAPI app) answers an OpenAI-style body, never ``{"detail": ...}``.

    Routing errors (404 for an unknown path, 405 for a wrong method) come from the framework
    before any handler runs; the gateway and the replicas answer them the same way.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def request_error(request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[:3]}"), status_code=400)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
