"""`polo serve RUN`: an OpenAI-compatible HTTP server for a run's model, on FastAPI + uvicorn.

    POST /v1/chat/completions   OpenAI chat completions: stream, n, stop, seed, temperature, top_p
    POST /v1/completions        the same for a plain prompt (no chat template)
    GET  /v1/models             the one model served
    GET  /health                ready, queue length, rows generating now, open streams (never needs the key)
    POST /apply-template        the prompt string a chat becomes (as llama.cpp's server names it)

`stream: true` answers with server-sent events in OpenAI's chunk format: a first chunk with the
role, content deltas as tokens come (never half a character), a last chunk per choice with its
finish_reason, a usage chunk when stream_options.include_usage is set, then `data: [DONE]`. A
client that disconnects stops its answer at the next token and frees its row of the batch.
Every OpenAI field the server cannot honour (logprobs, tools, penalties, ...) is named in a 400.

Started with an API key (`--api-key` or POLO_API_KEY, as vLLM and llama.cpp's server take one),
every endpoint but /health wants `Authorization: Bearer <key>` (compared in constant time) and
answers 401 in OpenAI's error shape without it. At most `max_queue` requests (streams included)
wait or generate at once; one more gets 503 with Retry-After, before any byte of a stream. A request
not answered within `request_timeout_s` gets 504 (a stream that started: an error event, and its
generation stops): a crowd slows the server down, it never takes it down.

The most common serving bug is a prompt or stop token that differs from training. Here the
prompt is the run's saved tokenizer (adapter/, the object training used) applying its own
chat template, and generation is inference.generate_prompts, which stops at that tokenizer's
EOS: the same code path evaluation measured. Concurrent requests, streamed or not, are collected
for a few milliseconds and generated in one left-padded batch by one thread (greedy rows are
identical to one-at-a-time generation, see tests/test_evaluate.py): the batch's streamer hands
each row's new text to its request's event queue, a request that is not streamed takes only its
row's end, the moment that row ends.

On a GPU with many users, vLLM serves the same base + adapter faster
(`vllm serve <base> --enable-lora --lora-modules easy=<run>/adapter`) or a merged export
(`polo export RUN --format merged`); this server is the light CPU path.

Here: the app, its routes, the checks of each request and the streamed events; OpenAI's request and
response shapes are in openai_api, the batching thread in backend (every name still importable from here).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from .. import inference, runs
from ..errors import ModelError, PoloError
from . import export
from .backend import Backend, Decoding, Job, Stats  # noqa: F401
from .limits import (  # noqa: F401
    API_KEY_ENV,
    BATCH_WAIT_MS,
    COMPLETIONS_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    MAX_BATCH_SIZE,
    MAX_QUEUE,
    MAX_STOP,
    MAX_TOKENS_LIMIT,
    REQUEST_TIMEOUT_S,
)
from .openai_api import (  # noqa: F401
    UNSUPPORTED,
    ApiError,
    ChatRequest,
    CompletionRequest,
    Message,
    StreamOptions,
    TextPart,
    _finish_reason,
    _Sampling,
    _sse,
    _timeout_error,
    _usage,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the app

def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop has {len(stops)} strings; at most {MAX_STOP} are allowed.", "stop")
    return tuple(s for s in stops if s)  # an empty string would end every answer before it starts


def check_sampling(req: _Sampling, backend: Backend, prompts: int, max_tokens: int) -> Decoding:
    """What every endpoint checks (fields it cannot honour, model, n, stream options, stop, max_tokens)
    and the Decoding the request's rows share; an ApiError naming the field and the fix."""
    if unsupported := req.unsupported():
        raise ApiError(400, "this server does not support " + "; ".join(unsupported) + ". Remove the field(s) or "
                            "send their default.", unsupported[0].split(" ")[0], code="unsupported_parameter")
    if req.model and req.model != backend.model_id:
        raise ApiError(404, f"model '{req.model}' is not served here; this server serves "
                            f"'{backend.model_id}' (GET /v1/models).", "model", code="model_not_found")
    if req.n > 1 and not req.temperature:
        raise ApiError(400, f"n={req.n} with greedy decoding (temperature unset or 0, this server's default) "
                            f"would return {req.n} identical choices: set temperature > 0 (e.g. 0.7) to sample "
                            f"{req.n} different answers, or send n=1.", "n")
    if prompts * req.n > backend.max_batch_size:
        asked = f"n={req.n}" + (f" for each of {prompts} prompts" if prompts > 1 else "")
        raise ApiError(400, f"{asked} asks for {prompts * req.n} answers at once; this server generates at most "
                            f"{backend.max_batch_size} together (--max-batch-size). Ask for fewer.", "n")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed with stream=true.", "stream_options")
    if max_tokens > backend.max_tokens_limit:
        raise ApiError(400, f"max_tokens={max_tokens} is over this server's limit of "
                            f"{backend.max_tokens_limit}; ask for fewer.", "max_tokens")
    return Decoding(max_tokens, req.temperature, req.top_p, _stops(req.stop), req.seed)


def _check_length(n_prompt: int, max_tokens: int, backend: Backend, param: str) -> None:
    if n_prompt + max_tokens > backend.max_seq_length:
        raise ApiError(400, f"the prompt is {n_prompt} tokens and max_tokens is {max_tokens}: together over "
                            f"the model's max_seq_length of {backend.max_seq_length} tokens. Shorten the "
                            f"{param} or lower max_tokens.", param, code="context_length_exceeded")


def validate(req: ChatRequest, backend: Backend) -> tuple[list[dict[str, str]], str, int, Decoding]:
    """(chat, prompt, prompt tokens, decoding) or an ApiError naming the field and the fix."""
    max_tokens = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, backend.max_tokens_limit)
    decoding = check_sampling(req, backend, 1, max_tokens)
    if req.messages[-1].role != "user":
        raise ApiError(400, f"the last message has role '{req.messages[-1].role}'; it must be 'user' "
                            "(the model answers the user's last message).", "messages")
    if any(m.role == "system" for m in req.messages[1:]):
        raise ApiError(400, "a 'system' message may only come first.", "messages")
    chat = [{"role": m.role, "content": m.text()} for m in req.messages]
    prompt = backend.render(chat)
    n_prompt = backend.count_tokens(prompt)
    _check_length(n_prompt, max_tokens, backend, "messages")
    return chat, prompt, n_prompt, decoding


def validate_completion(req: CompletionRequest, backend: Backend) -> tuple[list[str], int, Decoding]:
    """(prompts, prompt tokens in all, decoding) for /v1/completions: each prompt as given, no chat template."""
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    decoding = check_sampling(req, backend, len(prompts), req.max_tokens or COMPLETIONS_MAX_TOKENS)
    if not prompts or not all(p.strip() for p in prompts):
        raise ApiError(400, "prompt is empty: give the text to continue.", "prompt")
    counts = [backend.count_tokens(p) for p in prompts]
    _check_length(max(counts), decoding.max_tokens, backend, "prompt")
    # the continuation as generated: " Paris" after "The capital of France is" keeps its space
    return prompts, sum(counts), dataclasses.replace(decoding, strip=False)


async def stream_events(backend: Backend, job: Job, deadline: float, chat: bool, prompt_tokens: int,
                        include_usage: bool) -> AsyncIterator[str]:
    """A started job's events as OpenAI's server-sent events: (chat) a role chunk per choice, then
    one chunk per text piece and one with each choice's finish_reason, a usage chunk when asked,
    `data: [DONE]`. Each chunk carries one choice (clients read choices[0]). Past the deadline, or if
    generation fails, an error event in OpenAI's shape ends the stream (the openai client raises it)."""
    ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": backend.model_id, "choices": choices}
        if include_usage:
            body["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return _sse(body)

    def choice(index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    try:
        if chat:
            for index in range(len(job.prompts)):
                yield chunk([choice(index, role=True)])
        while len(job.results) < len(job.prompts):
            event = await job.next_event(deadline)
            if event[0] == "text":
                yield chunk([choice(event[1], event[2])])
            elif event[0] == "row":
                job.results[event[1]] = event[2]
                yield chunk([choice(event[1], finish=_finish_reason(event[2]))])
            elif event[0] == "error":
                raise event[1]
        if include_usage:
            yield chunk([], _usage(prompt_tokens, list(job.results.values())))
        yield "data: [DONE]\n\n"
    except asyncio.TimeoutError:
        backend.stats.timed_out += 1
        yield _sse(_timeout_error(backend.request_timeout_s).body())
    except Exception as e:  # headers are sent: the error goes in the stream
        log.exception("a streamed answer failed")
        yield _sse(ApiError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error").body())
    finally:
        backend.release(job)


class EventStream(StreamingResponse):
    """Server-sent events that release their job however the response ends. stream_events
    releases in its finally (finished, or cancelled by Starlette when the client leaves); this
    covers a response ended before the generator's first step, whose finally would never run
    (not seen with uvicorn 0.54 and Starlette 1.10, where the generator always starts: a cheap
    guard against a leaked queue slot, release is idempotent)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def check_api_key(api_key: str | None) -> str | None:
    """The key as given, None for none; an empty or blank key is refused (it would let anyone in)."""
    if api_key is not None and not api_key.strip():
        raise PoloError(f"the API key is empty: give a real one (--api-key, or {API_KEY_ENV}), or none to "
                        "serve without a key on this machine only.")
    return api_key


def create_app(backend: Backend, api_key: str | None = None) -> FastAPI:
    """The HTTP app around `backend`; with `api_key`, every endpoint but /health asks for it."""
    app = FastAPI(title="POLO Easy", description=__doc__.split("\n\n")[0])
    app.state.backend = backend
    expected = check_api_key(api_key)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        if expected is not None and request.url.path != "/health":
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken says nothing about how much of the key was right
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
                return ApiError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>' "
                                     "with the key this server was started with.", code="invalid_api_key").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        problems, params = [], []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            params.append(loc or None)
            problems.append(f"{loc or 'body'}: {err.get('msg')}")
        return ApiError(400, "invalid request: " + "; ".join(problems), params[0] if params else None).response()

    @app.get("/health")
    def health():
        s = backend.stats
        return {"status": "ok", "model": backend.model_id, "requests": s.requests, "batches": s.batches,
                "largest_batch": s.largest_batch, "max_seq_length": backend.max_seq_length,
                "waiting": backend.waiting, "max_queue": backend.max_queue, "generating": backend.generating,
                "max_batch_size": backend.max_batch_size, "streams": backend.streams,
                "cancelled_rows": s.cancelled_rows, "rejected_busy": s.rejected_busy, "timed_out": s.timed_out,
                "api_key_required": expected is not None}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": backend.model_id, "object": "model",
                                            "created": int(time.time()), "owned_by": "polo"}]}

    @app.post("/apply-template")
    async def apply_template(req: ChatRequest):
        chat, prompt, n_prompt, _ = validate(req, backend)
        return {"prompt": prompt, "prompt_tokens": n_prompt}

    async def answer(prompts: list[str], decoding: Decoding, req: _Sampling, prompt_tokens: int, chat: bool):
        if req.stream:
            job, deadline = await backend.open_stream(prompts, decoding)
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(stream_events(backend, job, deadline, chat, prompt_tokens, usage),
                               lambda: backend.release(job))
        gens = await backend.complete(prompts, decoding)
        ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        choices = [{"index": i, "logprobs": None, "finish_reason": _finish_reason(g),
                    **({"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text})}
                   for i, g in enumerate(gens)]
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": backend.model_id, "choices": choices, "usage": _usage(prompt_tokens, gens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        _, prompt, n_prompt, decoding = validate(req, backend)
        return await answer([prompt] * req.n, decoding, req, n_prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts, n_prompt, decoding = validate_completion(req, backend)
        # choice i*n + j is the j-th answer to prompt i, as OpenAI orders them
        return await answer([p for p in prompts for _ in range(req.n)], decoding, req, n_prompt, chat=False)

    return app


# ---------------------------------------------------------------- loading and running

def load_backend(run, merged: bool = False, **options: Any) -> Backend:
    """The run's model (base + adapter, or its merged export) with the run's own tokenizer."""
    cfg = run.params()
    tokenizer = inference.run_tokenizer(run)  # the chat template and EOS training used
    if tokenizer.pad_token_id is None:
        raise ModelError(f"run {run.id}: its tokenizer has no pad token, which batched generation needs.")
    lm = export.load_merged(run, cfg) if merged else inference.load_tuned(cfg, run)
    return Backend(inference.with_tokenizer(lm, tokenizer), model_id=f"polo-easy-{run.id}",
                   max_seq_length=cfg.model.max_seq_length, **options)


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, timeout: float = 30.0):
    """uvicorn in a background thread (tests, notebooks); returns the server (set should_exit to stop)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="polo-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PoloError(f"the server did not start on {host}:{port} (port in use? try --port).")
        time.sleep(0.05)
    server.thread = thread  # type: ignore[attr-defined]
    return server


def serve(run_id: str, host: str = "127.0.0.1", port: int = 8000, merged: bool = False,
          api_key: str | None = None, **options: Any) -> None:
    """Load the run's model and serve it until Ctrl-C; with `api_key`, only to who sends it."""
    import uvicorn

    run = runs.lookup(run_id)
    check_api_key(api_key)  # before the model loads
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who reaches this address can use the model. "
                    "Set %s (or --api-key) to require one.", host, API_KEY_ENV)
    backend = load_backend(run, merged=merged, **options)
    print(f"serving run {run.id} as '{backend.model_id}' on http://{host}:{port}/v1 "
          f"(max_seq_length {backend.max_seq_length}, batches of up to {backend.max_batch_size}, "
          f"queue of {backend.max_queue}, {backend.request_timeout_s:g} s per request; "
          f"API key {'required' if api_key else 'not required'})", flush=True)
    try:
        uvicorn.run(create_app(backend, api_key), host=host, port=port, log_level="info")
    finally:
        backend.close()
