"""`polo serve RUN`: an OpenAI-compatible HTTP server for a run's model, on FastAPI + uvicorn.

    POST /v1/chat/completions   OpenAI chat completions (no streaming, n = 1)
    GET  /v1/models             the one model served
    GET  /health                ready, queue length, batches served (never needs the key)
    POST /apply-template        the prompt string a chat becomes (as llama.cpp's server names it)

Started with an API key (`--api-key` or POLO_API_KEY, as vLLM and llama.cpp's server take one),
every endpoint but /health wants `Authorization: Bearer <key>` (compared in constant time) and
answers 401 in OpenAI's error shape without it. At most `max_queue` requests wait at once; one
more gets 503 with Retry-After, and a request not answered within `request_timeout_s` gets 504:
a crowd slows the server down, it never takes it down.

The most common serving bug is a prompt or stop token that differs from training. Here the
prompt is the run's saved tokenizer (adapter/, the object training used) applying its own
chat template, and generation is inference.generate, which stops at that tokenizer's EOS: the
same code path evaluation measured. Concurrent requests are collected for a few
milliseconds and generated in one left-padded batch (greedy rows are identical to
one-at-a-time generation, see tests/test_evaluate.py).

On a GPU with many users, vLLM serves the same base + adapter faster
(`vllm serve <base> --enable-lora --lora-modules easy=<run>/adapter`) or a merged export
(`polo export RUN --format merged`); this server is the light CPU path.
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import inference, runs
from ..errors import ModelError, PoloError
from . import export

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256       # OpenAI leaves it to the server; ~128 Hangul syllables on SmolLM2
MAX_TOKENS_LIMIT = 1024        # per request; the prompt + answer must also fit max_seq_length
MAX_BATCH_SIZE = 8             # rows generated together; 8 x 1024 tokens of KV cache is small on CPU
BATCH_WAIT_MS = 50             # how long the first request of a batch waits for company
MAX_QUEUE = 256                # requests accepted and not yet answered; one more gets 503
REQUEST_TIMEOUT_S = 300.0      # a request waiting and generating longer gets 504
API_KEY_ENV = "POLO_API_KEY"   # the key from the environment: never on a command line, in a log or a run folder


# ---------------------------------------------------------------- requests (OpenAI fields)

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    """The OpenAI fields this server honours; other OpenAI fields are accepted and ignored."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None or 0: greedy, as evaluation decodes
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stream: bool = False


class ApiError(Exception):
    """A 4xx in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


# ---------------------------------------------------------------- the batching backend

@dataclass
class _Pending:
    chat: list[dict[str, str]]
    key: tuple  # requests generate together only with equal max_tokens and sampling
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    rejected_busy: int = 0      # 503: the queue was full
    timed_out: int = 0          # 504: not answered within the time limit
    batch_sizes: list[int] = field(default_factory=list)


class Backend:
    """One model, one generation thread; requests arriving within `batch_wait_ms` share a batch."""

    def __init__(self, lm, model_id: str, max_seq_length: int, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                 max_batch_size: int = MAX_BATCH_SIZE, batch_wait_ms: float = BATCH_WAIT_MS,
                 max_queue: int = MAX_QUEUE, request_timeout_s: float = REQUEST_TIMEOUT_S):
        self.lm, self.model_id, self.max_seq_length = lm, model_id, max_seq_length
        self.max_tokens_limit = min(max_tokens_limit, max_seq_length)
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.max_queue, self.request_timeout_s = max_queue, request_timeout_s
        self.waiting = 0  # accepted, not yet answered (changed on the event loop only)
        self.stats = Stats()
        # The generation thread sets padding on the fast tokenizer while requests are encoded: a
        # shared Rust tokenizer then raises "Already borrowed". Requests get an identical copy.
        self.request_tokenizer = copy.deepcopy(lm.tokenizer)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="polo-generate", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def render(self, chat: list[dict[str, str]]) -> str:
        """The prompt string: exactly what inference.generate feeds the model for this chat."""
        return inference.prompt_text(self.request_tokenizer, chat)

    def count_tokens(self, text: str) -> int:
        return len(self.request_tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, chat: list[dict[str, str]], max_tokens: int, temperature: float | None,
                       top_p: float | None) -> inference.Generation:
        """The answer, generated in a batch with whatever else is waiting. ApiError 503 (with
        Retry-After) when max_queue requests already wait; 504 past request_timeout_s."""
        if self.waiting >= self.max_queue:
            self.stats.rejected_busy += 1
            wait = self.retry_after()
            raise ApiError(503, f"the server is busy: {self.waiting} requests are waiting (its queue holds "
                                f"{self.max_queue}); retry in {wait} s.", type_="server_error", code="overloaded",
                           headers={"Retry-After": str(wait)})
        loop = asyncio.get_running_loop()
        sampling = (True, float(temperature), float(top_p or 1.0)) if temperature else (False, 1.0, 1.0)
        pending = _Pending(chat, (max_tokens, *sampling), loop.create_future(), loop)
        self.waiting += 1
        try:
            self._queue.put(pending)
            return await asyncio.wait_for(pending.future, self.request_timeout_s)  # cancels it on time out
        except asyncio.TimeoutError:
            self.stats.timed_out += 1
            raise ApiError(504, f"no answer within the server's limit of {self.request_timeout_s:g} s per request "
                                "(it is busy, or max_tokens is large for this machine); retry, or ask for fewer "
                                "tokens.", type_="server_error", code="timeout") from None
        finally:
            self.waiting -= 1

    def retry_after(self) -> int:
        """Seconds until the queue has room, from the batches served so far (at least 1)."""
        per_batch = self.stats.generate_seconds / self.stats.batches if self.stats.batches else 1.0
        return max(1, math.ceil(per_batch * self.waiting / self.max_batch_size))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _collect(self, first: _Pending) -> list[_Pending]:
        batch, deadline = [first], time.monotonic() + self.batch_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups: dict[tuple, list[_Pending]] = {}
            for item in self._collect(first):
                if not item.future.cancelled():  # timed out while it waited: nobody reads the answer
                    groups.setdefault(item.key, []).append(item)
            for (max_tokens, do_sample, temperature, top_p), items in groups.items():
                start = time.perf_counter()
                try:
                    gens = inference.generate(self.lm, [i.chat for i in items], max_new_tokens=max_tokens,
                                              batch_size=len(items), do_sample=do_sample,
                                              temperature=temperature, top_p=top_p)
                except Exception as e:  # one bad batch must not kill the server
                    log.exception("generation failed")
                    for i in items:
                        i.loop.call_soon_threadsafe(_resolve, i.future, None, e)
                    continue
                s = self.stats
                s.batches += 1
                s.requests += len(items)
                s.largest_batch = max(s.largest_batch, len(items))
                s.batch_sizes.append(len(items))
                s.generated_tokens += sum(g.new_tokens for g in gens)
                s.generate_seconds += time.perf_counter() - start
                for i, g in zip(items, gens):
                    i.loop.call_soon_threadsafe(_resolve, i.future, g, None)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---------------------------------------------------------------- the app

def validate(req: ChatRequest, backend: Backend) -> tuple[list[dict[str, str]], str, int, int]:
    """(chat, prompt, prompt tokens, max_tokens) or an ApiError naming the field and the fix."""
    if req.model and req.model != backend.model_id:
        raise ApiError(404, f"model '{req.model}' is not served here; this server serves "
                            f"'{backend.model_id}' (GET /v1/models).", "model", code="model_not_found")
    if req.stream:
        raise ApiError(400, "stream=true is not supported by this server; send stream=false.", "stream")
    if req.n != 1:
        raise ApiError(400, f"n={req.n}: this server returns one choice; send n=1.", "n")
    if req.messages[-1].role != "user":
        raise ApiError(400, f"the last message has role '{req.messages[-1].role}'; it must be 'user' "
                            "(the model answers the user's last message).", "messages")
    if any(m.role == "system" for m in req.messages[1:]):
        raise ApiError(400, "a 'system' message may only come first.", "messages")
    max_tokens = req.max_completion_tokens or req.max_tokens or min(DEFAULT_MAX_TOKENS, backend.max_tokens_limit)
    if max_tokens > backend.max_tokens_limit:
        raise ApiError(400, f"max_tokens={max_tokens} is over this server's limit of "
                            f"{backend.max_tokens_limit}; ask for fewer.", "max_tokens")
    chat = [{"role": m.role, "content": m.text()} for m in req.messages]
    prompt = backend.render(chat)
    n_prompt = backend.count_tokens(prompt)
    if n_prompt + max_tokens > backend.max_seq_length:
        raise ApiError(400, f"the prompt is {n_prompt} tokens and max_tokens is {max_tokens}: together over "
                            f"the model's max_seq_length of {backend.max_seq_length} tokens. Shorten the "
                            "messages or lower max_tokens.", "messages", code="context_length_exceeded")
    return chat, prompt, n_prompt, max_tokens


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
                "waiting": backend.waiting, "max_queue": backend.max_queue, "rejected_busy": s.rejected_busy,
                "timed_out": s.timed_out, "api_key_required": expected is not None}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": backend.model_id, "object": "model",
                                            "created": int(time.time()), "owned_by": "polo"}]}

    @app.post("/apply-template")
    async def apply_template(req: ChatRequest):
        chat, prompt, n_prompt, _ = validate(req, backend)
        return {"prompt": prompt, "prompt_tokens": n_prompt}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        chat, _, n_prompt, max_tokens = validate(req, backend)
        gen = await backend.generate(chat, max_tokens, req.temperature, req.top_p)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": "stop" if gen.stopped else "length"}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": gen.new_tokens,
                      "total_tokens": n_prompt + gen.new_tokens},
        }

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
