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
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import hmac
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import inference, runs
from ..errors import ModelError, PoloError
from . import export
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

log = logging.getLogger(__name__)



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


# ---------------------------------------------------------------- the batching backend

@dataclass(frozen=True)
class Decoding:
    """What the rows of one generate call must share (sampling is per batch in transformers)."""
    max_tokens: int
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    strip: bool = True  # chat answers stripped (as evaluation scores them); a plain prompt's continuation kept whole

    @property
    def do_sample(self) -> bool:
        return bool(self.temperature)


class Job:
    """One request: its rows (n choices of each prompt) and the events its handler reads.

    The generation thread reports on the request's event loop (call_soon_threadsafe), in order:
    ("start",) when its batch begins, ("text", choice, piece) as a streamed row grows, ("row",
    choice, Generation) when a row ends, ("error", exception) if the batch fails.
    """

    def __init__(self, prompts: list[str], decoding: Decoding, stream: bool, loop: asyncio.AbstractEventLoop):
        self.prompts, self.decoding, self.stream, self.loop = prompts, decoding, stream, loop
        self.events: asyncio.Queue[tuple] = asyncio.Queue()
        self.cancelled = threading.Event()  # read by the generation thread at every step
        self.results: dict[int, inference.Generation] = {}
        self.closed = False
        # a seeded request samples alone: its answers then depend on its seed, not on its neighbours
        self.key: tuple = (decoding, id(self)) if decoding.seed is not None and decoding.do_sample else (decoding,)

    def tell(self, *event) -> None:
        """From the generation thread: an event for the handler (dropped once the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop closed (server shutting down)
            pass

    async def next_event(self, deadline: float) -> tuple:
        """The next event; TimeoutError past `deadline` (loop time)."""
        return await asyncio.wait_for(self.events.get(), max(0.0, deadline - self.loop.time()))


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    rejected_busy: int = 0      # 503: the queue was full
    timed_out: int = 0          # 504: not answered within the time limit
    cancelled_rows: int = 0     # rows stopped before their end: the client left or timed out
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
        self.streams = 0  # streams open now (event loop only)
        self.generating = 0  # rows of the running batch not yet ended (generation thread only)
        self.stats = Stats()
        # The generation thread sets padding on the fast tokenizer while requests are encoded: a
        # shared Rust tokenizer then raises "Already borrowed". Requests get an identical copy.
        self.request_tokenizer = copy.deepcopy(lm.tokenizer)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: deque[Job] = deque()  # taken from the queue but not in the last batch (no room)
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

    # ------------------------------------------------ on the event loop
    def submit(self, prompts: list[str], decoding: Decoding, stream: bool = False) -> Job:
        """Queue a request's rows; ApiError 503 (with Retry-After) when max_queue requests already wait.
        The caller must `release` the job once answered."""
        if self.waiting >= self.max_queue:
            self.stats.rejected_busy += 1
            wait = self.retry_after()
            raise ApiError(503, f"the server is busy: {self.waiting} requests are waiting (its queue holds "
                                f"{self.max_queue}); retry in {wait} s.", type_="server_error", code="overloaded",
                           headers={"Retry-After": str(wait)})
        job = Job(prompts, decoding, stream, asyncio.get_running_loop())
        self.waiting += 1
        self.streams += stream
        self._queue.put(job)
        return job

    def release(self, job: Job) -> None:
        """The request is answered or gone: rows still generating stop at their next token."""
        if job.closed:
            return
        job.closed = True
        job.cancelled.set()
        self.waiting -= 1
        self.streams -= job.stream

    async def complete(self, prompts: list[str], decoding: Decoding) -> list[inference.Generation]:
        """Every row's Generation, generated in a batch with whatever else is waiting. ApiError 503
        when the queue is full, 504 past request_timeout_s (its rows then stop generating)."""
        job = self.submit(prompts, decoding)
        deadline = job.loop.time() + self.request_timeout_s
        try:
            while len(job.results) < len(prompts):
                event = await job.next_event(deadline)
                if event[0] == "row":
                    job.results[event[1]] = event[2]
                elif event[0] == "error":
                    raise event[1]
            return [job.results[i] for i in range(len(prompts))]
        except asyncio.TimeoutError:
            self.stats.timed_out += 1
            raise _timeout_error(self.request_timeout_s) from None
        finally:
            self.release(job)

    async def open_stream(self, prompts: list[str], decoding: Decoding) -> tuple[Job, float]:
        """A streamed request whose batch has begun, and its deadline (loop time). The wait in the queue
        ends in 503 (full) or 504 (too long) before the response starts, so those keep their status."""
        job = self.submit(prompts, decoding, stream=True)
        deadline = job.loop.time() + self.request_timeout_s
        try:
            event = await job.next_event(deadline)
        except BaseException as e:  # timed out in the queue, or the handler was cancelled
            self.release(job)
            if isinstance(e, asyncio.TimeoutError):
                self.stats.timed_out += 1
                raise _timeout_error(self.request_timeout_s) from None
            raise
        if event[0] == "error":
            self.release(job)
            raise event[1]
        return job, deadline

    def retry_after(self) -> int:
        """Seconds until the queue has room, from the batches served so far (at least 1)."""
        per_batch = self.stats.generate_seconds / self.stats.batches if self.stats.batches else 1.0
        return max(1, math.ceil(per_batch * self.waiting / self.max_batch_size))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ------------------------------------------------ in the generation thread
    def _next(self, timeout: float | None) -> Job | None:
        """A held job first, else the queue's next; None when closing. queue.Empty after `timeout`."""
        if self._held:
            return self._held.popleft()
        item = self._queue.get(timeout=timeout) if timeout is not None else self._queue.get()
        if item is None:
            self._queue.put(None)  # every later call sees it too
        return item

    def _collect(self, first: Job) -> list[Job]:
        """`first` and the jobs that arrive within batch_wait, up to max_batch_size rows in all."""
        batch, rows, deadline = [first], len(first.prompts), time.monotonic() + self.batch_wait
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._next(remaining)
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                break
            if rows + len(item.prompts) > self.max_batch_size:
                self._held.appendleft(item)  # first in the next batch
                break
            batch.append(item)
            rows += len(item.prompts)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            groups: dict[tuple, list[Job]] = {}
            for job in self._collect(first):
                if not job.cancelled.is_set():  # timed out or gone while it waited: nobody reads the answer
                    groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                self._generate(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        rows = [(job, choice) for job in jobs for choice in range(len(job.prompts))]
        d = jobs[0].decoding
        streamed = any(job.stream for job in jobs)

        def on_text(i: int, piece: str) -> None:
            job, choice = rows[i]
            if job.stream:
                job.tell("text", choice, piece)

        def on_done(i: int, gen: inference.Generation) -> None:
            job, choice = rows[i]
            self.generating -= 1
            self.stats.cancelled_rows += gen.cancelled
            job.tell("row", choice, gen)

        # Counted before any row ends: a request is answered the moment its rows end, and whoever
        # reads the stats then (/health, a test) must find its batch there already.
        s = self.stats
        s.batches += 1
        s.requests += len(jobs)
        s.largest_batch = max(s.largest_batch, len(rows))
        s.batch_sizes.append(len(rows))
        for job in jobs:
            job.tell("start")
        self.generating = len(rows)
        start = time.perf_counter()
        try:
            gens = inference.generate_prompts(
                self.lm, [job.prompts[choice] for job, choice in rows], max_new_tokens=d.max_tokens,
                batch_size=len(rows), do_sample=d.do_sample, temperature=d.temperature or 1.0, top_p=d.top_p or 1.0,
                stop=d.stop, seed=d.seed, strip=d.strip, on_text=on_text if streamed else None, on_done=on_done,
                cancelled=lambda i: rows[i][0].cancelled.is_set())
            s.generated_tokens += sum(g.new_tokens for g in gens)
            s.generate_seconds += time.perf_counter() - start
        except Exception as e:  # one bad batch must not kill the server
            log.exception("generation failed")
            for job in jobs:
                job.tell("error", e)
        finally:
            self.generating = 0  # after the stats: /health's idle means the figures are final


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


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _finish_reason(gen: inference.Generation) -> str:
    """OpenAI's: "length" for an answer cut at max_tokens, "stop" for one that ended (EOS, a stop string)."""
    return "length" if gen.cut else "stop"


def _usage(prompt_tokens: int, gens: list[inference.Generation]) -> dict[str, int]:
    completion = sum(g.new_tokens for g in gens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


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
