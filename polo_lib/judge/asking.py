"""Asking the endpoint: the chat, HTTP retries with backoff (Asker), every pair in both orders (judge)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import EndpointError
from .pairs import Pairs
from .settings import TIE, TUNED, api_base, rubric_hash, shown_endpoint
from .verdicts import REMINDER, _append, _key, parse_verdict, read_verdicts

RETRIED_STATUS = {408, 409, 429}  # and every 5xx


def messages(rubric: str, original: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat the judge reads: the rubric as the system message, the source and the two answers."""
    user = (f"Source paragraph:\n<<<\n{original.strip()}\n>>>\n\nAnswer A:\n<<<\n{answer_a.strip()}\n>>>\n\n"
            f"Answer B:\n<<<\n{answer_b.strip()}\n>>>\n\nWhich answer is better by the criteria? End with the "
            "line VERDICT: A, VERDICT: B or VERDICT: TIE.")
    return [{"role": "system", "content": rubric.strip()}, {"role": "user", "content": user}]



class _Failed(Exception):
    """A request that failed for good (after its retries, or at once for a 4xx)."""


@dataclass
class Asker:
    """One OpenAI-compatible chat endpoint, asked with retries; thread-safe (one httpx.Client)."""
    endpoint: str
    model: str
    key: str | None = None
    http_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    max_tokens: int = 512
    temperature: float = 0.0
    role: str = "judge"  # what the endpoint is to the caller, in its messages (polo draft: the teacher)
    sleep: Callable[[float], None] = time.sleep
    retried: int = 0  # retries made (5xx, 429, timeouts, connections), for the summary
    _client: Any = field(default=None, repr=False)

    def __post_init__(self):
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self._client = httpx.Client(base_url=api_base(self.endpoint), headers=headers, timeout=self.timeout_s)

    def close(self) -> None:
        self._client.close()

    def check(self) -> str | None:
        """Before any request: the endpoint answers and takes the key. An EndpointError saying what to do
        otherwise; a note (or None) when its model list does not name the judge model."""
        import httpx

        base = api_base(self.endpoint)
        try:
            response = self._client.get("/models", timeout=min(self.timeout_s, 30))
        except httpx.HTTPError as e:
            raise EndpointError(f"cannot reach the {self.role} at {shown_endpoint(base)} ({type(e).__name__}: {e}). Is "
                                "the server running, and is the URL the API's base (e.g. http://127.0.0.1:8000/v1)?"
                                ) from None
        if response.status_code in (401, 403):
            raise EndpointError(f"the {self.role} at {shown_endpoint(base)} refused the request (HTTP "
                                f"{response.status_code}): it needs a valid key; name the variable holding it with "
                                "--api-key-env (or api_key_env in the settings).")
        if response.status_code != 200:
            return None  # some servers have no model list; the first request tells
        try:
            served = [m.get("id") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return None
        if served and self.model not in served:
            return (f"the endpoint lists {', '.join(map(str, served[:5]))}{' ...' if len(served) > 5 else ''}, "
                    f"not '{self.model}' (a server that serves one model may answer to any name)")
        return None

    def ask(self, chat: list[dict[str, str]]) -> str:
        """The reply's text; HTTP 5xx / 429 / timeouts / dropped connections retried with backoff
        (backoff_s, then twice as long each time); _Failed when it gives up or at once for a 4xx."""
        return self.ask_counted(chat)[0]

    def ask_counted(self, chat: list[dict[str, str]]) -> tuple[str, int | None]:
        """(the reply's text, the tokens the request used: usage.total_tokens, None when the server gives none),
        asked as `ask` says."""
        import httpx

        body = {"model": self.model, "messages": chat, "max_tokens": self.max_tokens, "temperature": self.temperature}
        for attempt in range(self.http_retries + 1):
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.TransportError as e:  # timeouts, refused or dropped connections
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if response.status_code == 200:
                    try:
                        body = response.json()
                        usage = (body.get("usage") or {}).get("total_tokens")
                        return body["choices"][0]["message"]["content"] or "", usage
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        raise _Failed(f"HTTP 200 without choices[0].message.content: {response.text[:200]}") from None
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500 and response.status_code not in RETRIED_STATUS:
                    raise _Failed(problem)
            if attempt < self.http_retries:
                self.retried += 1
                self.sleep(self.backoff_s * 2 ** attempt)
        raise _Failed(f"{problem} (after {self.http_retries} retries)")



@dataclass(frozen=True)
class Outcome:
    """What one `judge` call did: requests asked now, skipped (judged before), failed for good."""
    asked: int
    skipped: int
    failed: list[str]
    http_retries: int
    seconds: float


def judge(pairs: Pairs, asker: Asker, rubric: str, attempts: int = 3, concurrency: int = 4,
          on_verdict: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Ask the judge about every pair in both orders ("tuned_first": tuned is A; "other_first":
    tuned is B), skipping those judge.jsonl already holds for this judge model and rubric; each
    verdict appended to judge.jsonl as it comes. A request that fails for good (HTTP, after its
    retries) is not written, so the next run asks it again; they are listed in the outcome."""
    start = time.perf_counter()
    r_hash = rubric_hash(rubric)
    done = {_key(r) for r in read_verdicts(pairs.path)}
    base_record = {"run_id": pairs.run_id, "evaluation_id": pairs.evaluation_id, "against": pairs.against,
                   "against_evaluation": pairs.against_evaluation, "judge_model": asker.model,
                   "endpoint": shown_endpoint(asker.endpoint), "rubric_hash": r_hash}
    todo = []
    for example in pairs.examples:
        for order in ("tuned_first", "other_first"):
            if _key({**base_record, "id": example["id"], "order": order}) not in done:
                todo.append((example, order))
    lock, failed = threading.Lock(), []

    def one(example: dict[str, str], order: str) -> None:
        a, b = (TUNED, pairs.against) if order == "tuned_first" else (pairs.against, TUNED)
        text = {TUNED: example["tuned"], pairs.against: example["other"]}
        chat = messages(rubric, example["original"], text[a], text[b])
        reply, verdict, tries = "", None, 0
        try:
            while verdict is None and tries < attempts:
                tries += 1
                again = [{"role": "assistant", "content": reply}, {"role": "user", "content": REMINDER}]
                reply = asker.ask(chat if tries == 1 else [*chat, *again])
                verdict = parse_verdict(reply)
        except _Failed as e:
            with lock:
                failed.append(f"{example['id']} ({order}): {e}")
            return
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **base_record,
                  "id": example["id"], "order": order, "a": a, "b": b, "verdict": verdict,
                  "preferred": None if verdict is None else {"A": a, "B": b}.get(verdict, TIE),
                  "status": "ok" if verdict else "unparseable", "tries": tries, "reply": reply}
        _append(pairs.path, record, lock)
        if on_verdict:
            on_verdict(record)

    pairs.path.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(one, ex, order) for ex, order in todo]:
            future.result()
    return Outcome(asked=len(todo) - len(failed), skipped=2 * len(pairs.examples) - len(todo),
                   failed=sorted(failed), http_retries=asker.retried,
                   seconds=round(time.perf_counter() - start, 1))
