"""The batching backend of `polo serve`: one model, one generation thread; requests arriving within a
few milliseconds share a left-padded batch, each row's text handed to its request as it comes."""
from __future__ import annotations

import asyncio
import copy
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .. import inference
from .limits import BATCH_WAIT_MS, MAX_BATCH_SIZE, MAX_QUEUE, MAX_TOKENS_LIMIT, REQUEST_TIMEOUT_S
from .openai_api import ApiError, _timeout_error

log = logging.getLogger(__name__)


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
