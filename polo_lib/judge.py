"""An LLM judge through any OpenAI-compatible endpoint: which of two answers to the same source
paragraph is better, the run's tuned model's or its base model's (or another run's tuned model's).

Each pair is asked in both orders (tuned as A, then tuned as B): a judge that prefers whatever it
reads first then cancels out, and the pairs whose verdict changed with the order are counted. A
reply must end with the line "VERDICT: A", "VERDICT: B" or "VERDICT: TIE"; one that does not is
asked again (`attempts` in all) and then recorded as unparseable, never dropped. HTTP 5xx, 429,
timeouts and dropped connections are retried with exponential backoff; requests run `concurrency`
at a time. Every verdict is one line appended at once to eval/<id>/judge.jsonl, so a crash loses
nothing, and a rerun skips what the same judge model has judged under the same rubric (its hash).

From the lines: the tuned model's win rate (ties and order-dependent verdicts count half) with a
bootstrap interval over examples, the order disagreements, the unparseable replies, and, where
people rated the same pairs (ratings.jsonl), the judge's agreement with them (accuracy, Cohen's
kappa), which says how far to trust the win rate.

The key is read from an environment variable whose name is given (settings or --api-key-env); the
key itself is never written to a file, a log or the run folder.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import paths, runs, stats
from .atomic import append_line
from .errors import EndpointError, ParamsError, RunError

JUDGE_DIR = paths.PARAMS_DIR / "judge"  # settings (default.yaml) and the rubric (rubric.md)
JUDGE_FILE = "judge.jsonl"
RATINGS_FILE = "ratings.jsonl"
TUNED, BASE, TIE = "tuned", "base", "tie"
# Strict: the reply's last non-empty line, exactly this (spaces around it aside).
VERDICT_LINE = re.compile(r"^VERDICT:\s*(A|B|TIE)$")
REMINDER = ("Your reply did not end with the verdict line. Answer again, ending with exactly one last line: "
            "VERDICT: A, VERDICT: B or VERDICT: TIE.")
RETRIED_STATUS = {408, 409, 429}  # and every 5xx


class Settings(BaseModel):
    """How to ask the judge (params/judge/default.yaml; each value may be replaced on the command line)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    rubric: str = "rubric.md"
    concurrency: int = Field(4, ge=1, le=256)
    attempts: int = Field(3, ge=1, le=20)
    http_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, le=600)
    timeout_s: float = Field(120.0, gt=0, le=3600)
    max_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0, le=2)


def load_settings(ref: str | os.PathLike = "default", **overrides: Any) -> tuple[Settings, Path]:
    """(the settings, the rubric file) from a YAML in params/judge/ (by name) or a path, with
    `overrides` (None values left out) on top. A relative rubric is relative to the settings file,
    else to the repo root; a missing one is a ParamsError."""
    try:
        path = paths.find_yaml(ref, JUDGE_DIR, "judge settings")
    except FileNotFoundError as e:
        raise ParamsError(str(e)) from None
    body = paths.read_yaml(path, ParamsError, paths.display(path)) or {}
    if not isinstance(body, Mapping):
        raise ParamsError(f"{paths.display(path)}: expected a mapping of settings, got {type(body).__name__}")
    body = {**body, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        settings = Settings.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ParamsError(f"{paths.display(path)}: {problems}") from None
    if overrides.get("rubric") is not None:  # given on the command line: from the cwd, else the repo root
        rubric = Path(settings.rubric).expanduser()
        rubric = rubric if rubric.is_file() else paths.resolve_project_path(settings.rubric)
    else:  # in the settings file: beside it
        rubric = path.parent / Path(settings.rubric).expanduser()
    if not rubric.is_file():
        raise ParamsError(f"rubric {paths.display(rubric)} not found: give an existing file (--rubric FILE), e.g. "
                          f"a copy of {paths.display(JUDGE_DIR / 'rubric.md')} you edited.")
    return settings, rubric


def rubric_hash(text: str) -> str:
    """12 hex digits of the rubric's text: verdicts under another rubric are another set."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def api_base(endpoint: str) -> str:
    """The API's base URL as the openai client takes it: 'http://host:8000' -> 'http://host:8000/v1'."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ParamsError(f"--endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def shown_endpoint(endpoint: str) -> str:
    """The endpoint as recorded: no user:password and no query string (where some services put keys)."""
    parts = urlsplit(api_base(endpoint))
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def read_key(api_key_env: str | None) -> str | None:
    """The key from the environment variable named `api_key_env` (None: no key); a ParamsError when
    one is named and not set, before anything is asked."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ParamsError(f"the judge's key is to come from ${api_key_env}, which is not set (or empty): "
                          f"export {api_key_env}=... first, or name another variable with --api-key-env.")
    return key


# ---------------------------------------------------------------- the pairs

@dataclass(frozen=True)
class Pairs:
    """What is judged: the examples of one evaluation of `run_id`, its tuned answers against
    `against` ("base", or another run's id, whose evaluation `against_evaluation` has the same examples)."""
    run_id: str
    evaluation_id: str
    folder: Path
    against: str
    against_evaluation: str | None
    examples: tuple[dict[str, str], ...]  # id, original, tuned, other

    @property
    def path(self) -> Path:
        return self.folder / JUDGE_FILE


def _finished_evaluation(run: runs.Run):
    evaluation = run.evaluation()
    if evaluation is None:
        raise RunError(f"run {run.id} has no finished evaluation, so there are no answers to judge: evaluate it "
                       f"first (polo run {run.id} --stages evaluate, or notebooks/evaluate.ipynb).")
    path = evaluation.path / "predictions.jsonl"
    if not path.is_file():
        raise RunError(f"{path} does not exist: evaluation {evaluation.id} wrote no answers; evaluate the run again.")
    frame = pd.read_json(path, lines=True, dtype={"id": str})
    missing = {"id", "original", TUNED, BASE} - set(frame.columns)
    if missing or frame.empty:
        raise RunError(f"{path} {'lacks ' + ', '.join(sorted(missing)) if missing else 'is empty'}: evaluate the "
                       "run again to judge it.")
    return evaluation, frame


def load_pairs(run: runs.Run, against: runs.Run | None = None) -> Pairs:
    """The run's latest finished evaluation: tuned vs base, or vs the tuned answers of the `against`
    run's latest finished evaluation, which must hold the same examples (ids and source texts)."""
    evaluation, frame = _finished_evaluation(run)
    other_name, other_eval = BASE, None
    others = dict(zip(frame["id"], frame[BASE].astype(str)))
    if against is not None:
        if against.id == run.id:
            raise RunError(f"--against names run {run.id} itself: give another run, or leave --against out to judge "
                           "tuned vs base.")
        other_evaluation, other = _finished_evaluation(against)
        why = stats.same_examples(frame, other)
        if why:
            raise RunError(f"runs {run.id} (evaluation {evaluation.id}) and {against.id} (evaluation "
                           f"{other_evaluation.id}) were evaluated on different examples ({why}): evaluate both on "
                           "the same split and limit to judge their answers side by side.")
        other_name, other_eval = against.id, other_evaluation.id
        others = dict(zip(other["id"], other[TUNED].astype(str)))
    examples = tuple({"id": str(r.id), "original": str(r.original), "tuned": str(r.tuned), "other": others[r.id]}
                     for r in frame.itertuples(index=False))
    return Pairs(run.id, evaluation.id, evaluation.path, other_name, other_eval, examples)


# ---------------------------------------------------------------- asking

def messages(rubric: str, original: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat the judge reads: the rubric as the system message, the source and the two answers."""
    user = (f"Source paragraph:\n<<<\n{original.strip()}\n>>>\n\nAnswer A:\n<<<\n{answer_a.strip()}\n>>>\n\n"
            f"Answer B:\n<<<\n{answer_b.strip()}\n>>>\n\nWhich answer is better by the criteria? End with the "
            "line VERDICT: A, VERDICT: B or VERDICT: TIE.")
    return [{"role": "system", "content": rubric.strip()}, {"role": "user", "content": user}]


def parse_verdict(reply: str | None) -> str | None:
    """"A", "B" or "TIE" from the reply's last non-empty line ("VERDICT: A"), else None."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    match = VERDICT_LINE.match(lines[-1]) if lines else None
    return match.group(1) if match else None


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
        """Before any judging: the endpoint answers and takes the key. An EndpointError saying what to do
        otherwise; a note (or None) when its model list does not name the judge model."""
        import httpx

        base = api_base(self.endpoint)
        try:
            response = self._client.get("/models", timeout=min(self.timeout_s, 30))
        except httpx.HTTPError as e:
            raise EndpointError(f"cannot reach the judge at {shown_endpoint(base)} ({type(e).__name__}: {e}). Is "
                                "the server running, and is the URL the API's base (e.g. http://127.0.0.1:8000/v1)?"
                                ) from None
        if response.status_code in (401, 403):
            raise EndpointError(f"the judge at {shown_endpoint(base)} refused the request (HTTP "
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
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise _Failed(f"HTTP 200 without choices[0].message.content: {response.text[:200]}") from None
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500 and response.status_code not in RETRIED_STATUS:
                    raise _Failed(problem)
            if attempt < self.http_retries:
                self.retried += 1
                self.sleep(self.backoff_s * 2 ** attempt)
        raise _Failed(f"{problem} (after {self.http_retries} retries)")


def _append(path: Path, record: dict[str, Any], lock: threading.Lock) -> None:
    """One verdict appended at once (atomic.append_line: one write, fsynced, a cut last line ended first)."""
    with lock:
        append_line(path, json.dumps(record, ensure_ascii=False))


def read_verdicts(path: Path) -> list[dict[str, Any]]:
    """judge.jsonl's records, oldest first; a line cut by a crash (not JSON) is skipped: its pair is
    judged again on the next run."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and {"id", "order", "judge_model", "rubric_hash"} <= set(record):
            out.append(record)
    return out


def _key(record: Mapping[str, Any]) -> tuple:
    return (str(record["id"]), record["order"], record.get("against"), record.get("against_evaluation"),
            record["judge_model"], record["rubric_hash"])


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


# ---------------------------------------------------------------- results

def read_human_ratings(path: Path, against: str) -> pd.DataFrame:
    """People's ratings of the same comparison from ratings.jsonl (`polo rate`): one row per rater and
    example (their last rating of it), columns example_id, rater, preferred ("tuned", the other side's
    name, or "tie"). Lines of another comparison, or not ratings, are left out. Kept small and alone so
    it follows ratings.jsonl's format in one place."""
    rows = []
    path = Path(path)
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r, dict) or not {"rater", "preferred"} <= set(r) or r.get("against", BASE) != against:
            continue
        rows.append({"example_id": str(r.get("example_id", r.get("id"))), "rater": r["rater"],
                     "preferred": r["preferred"]})
    frame = pd.DataFrame(rows, columns=["example_id", "rater", "preferred"])
    return frame.drop_duplicates(["rater", "example_id"], keep="last").reset_index(drop=True)


def _cohen_kappa(x: list[str], y: list[str], labels: list[str]) -> float:
    from sklearn.metrics import cohen_kappa_score

    if len(set(x) | set(y)) < 2:  # one label throughout: chance agreement is 1, kappa is 0/0
        return math.nan
    return float(cohen_kappa_score(x, y, labels=labels))


@dataclass(frozen=True)
class Results:
    """The judge's verdicts on one comparison under one judge model and rubric, summed up.

    Per example, each order scores the tuned answer 1 (preferred), 0.5 (tie) or 0; the example's score
    is the mean of its two orders, so a verdict that follows the position (A, then A again once
    swapped) scores 0.5 and counts as an order disagreement, not as a win."""
    judge_model: str
    rubric_hash: str
    against: str
    examples: int               # in the evaluation
    judged: int                 # with a parsed verdict in both orders: the win rate's examples
    wins: int                   # both orders (or one, the other a tie) prefer tuned
    losses: int
    ties: int                   # score 0.5: both ties, or the orders disagree outright
    win_rate: float             # tuned's mean score (ties half)
    low: float                  # bootstrap interval over examples
    high: float
    order_disagreements: int    # examples whose preferred answer changed when A and B swapped
    unparseable: int            # replies (orders) without a verdict after every attempt
    unparseable_examples: int   # examples left out of the win rate for it
    missing: int                # orders not judged yet (failed requests, or an interrupted run)
    human: dict[str, Any] | None  # ratings, raters, examples, accuracy, kappa: the judge against people
    per_example: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def results(pairs: Pairs, judge_model: str, rubric: str, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Results:
    """judge.jsonl's verdicts for this comparison, judge model and rubric (the last per example and
    order), with the human ratings of the same pairs when there are any."""
    r_hash = rubric_hash(rubric)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_verdicts(pairs.path):
        if (r["judge_model"], r["rubric_hash"], r.get("against"), r.get("against_evaluation")) == \
                (judge_model, r_hash, pairs.against, pairs.against_evaluation):
            latest[(str(r["id"]), r["order"])] = r
    score = {TUNED: 1.0, TIE: 0.5, pairs.against: 0.0}
    rows, unparseable, unparseable_examples, missing = [], 0, 0, 0
    for example in pairs.examples:
        orders = [latest.get((example["id"], o)) for o in ("tuned_first", "other_first")]
        missing += sum(o is None for o in orders)
        bad = sum(o is not None and o.get("preferred") is None for o in orders)
        unparseable, unparseable_examples = unparseable + bad, unparseable_examples + (bad > 0)
        if any(o is None or o.get("preferred") is None for o in orders):
            rows.append({"id": example["id"], "tuned_first": orders[0] and orders[0].get("preferred"),
                         "other_first": orders[1] and orders[1].get("preferred"), "score": math.nan,
                         "disagree": None, "label": None})
            continue
        first, second = (o["preferred"] for o in orders)
        s = (score[first] + score[second]) / 2
        label = TUNED if s > 0.5 else pairs.against if s < 0.5 else TIE
        rows.append({"id": example["id"], "tuned_first": first, "other_first": second, "score": s,
                     "disagree": first != second, "label": label})
    frame = pd.DataFrame(rows)
    judged = frame.dropna(subset=["score"])
    low, high = stats.bootstrap_ci(judged["score"].to_numpy(), resamples, confidence, seed)
    return Results(judge_model=judge_model, rubric_hash=r_hash, against=pairs.against, examples=len(pairs.examples),
                   judged=len(judged), wins=int((judged["score"] > 0.5).sum()),
                   losses=int((judged["score"] < 0.5).sum()), ties=int((judged["score"] == 0.5).sum()),
                   win_rate=float(judged["score"].mean()) if len(judged) else math.nan, low=low, high=high,
                   order_disagreements=int(judged["disagree"].sum()), unparseable=unparseable,
                   unparseable_examples=unparseable_examples,
                   missing=missing, human=agreement(judged, read_human_ratings(pairs.folder / RATINGS_FILE,
                                                                               pairs.against), pairs.against),
                   per_example=json.loads(frame.to_json(orient="records")))


def agreement(judged: pd.DataFrame, ratings: pd.DataFrame, against: str) -> dict[str, Any] | None:
    """The judge's label per example (tuned, the other side, or tie) against each person's rating of
    it: how many ratings, by how many raters, on how many examples; the share where they agree
    (accuracy) and Cohen's kappa (scikit-learn) over the three outcomes. None without shared pairs."""
    labels = dict(zip(judged["id"], judged["label"]))
    shared = ratings[ratings["example_id"].isin(labels)] if len(ratings) else ratings
    if shared.empty:
        return None
    judge_says = [labels[i] for i in shared["example_id"]]
    people_say = list(shared["preferred"])
    return {"ratings": len(shared), "raters": int(shared["rater"].nunique()),
            "examples": int(shared["example_id"].nunique()),
            "accuracy": float(sum(j == p for j, p in zip(judge_says, people_say)) / len(shared)),
            "kappa": _cohen_kappa(judge_says, people_say, [TUNED, against, TIE])}


def summary_lines(res: Results, pairs: Pairs, rubric_path: Path | None = None) -> list[str]:
    """The results for a terminal: the agreement with people first (how far to trust the judge), then
    the win rate, the order disagreements and what could not be read."""
    other = "base" if pairs.against == BASE else f"run {pairs.against}'s tuned answers"
    rubric = f"rubric {res.rubric_hash}" + (f" ({paths.display(rubric_path)})" if rubric_path else "")
    lines = [f"judge {res.judge_model}, {rubric}: run {pairs.run_id} (evaluation {pairs.evaluation_id}), tuned vs "
             f"{other}, {res.examples} examples, each asked in both orders"]
    h = res.human
    if h:
        kappa = "undefined (one outcome throughout)" if math.isnan(h["kappa"]) else f"{h['kappa']:.2f}"
        lines.append(f"agreement with people: {h['ratings']} ratings by {h['raters']} rater(s) on {h['examples']} "
                     f"examples: accuracy {h['accuracy']:.2f}, Cohen's kappa {kappa}")
    else:
        lines.append("agreement with people: no human ratings of these pairs yet (polo rate), so nothing says how "
                     "far this judge can be trusted")
    if res.judged:
        interval = "" if math.isnan(res.low) else f" [{res.low:.2f}, {res.high:.2f}]"
        lines.append(f"win rate of tuned (ties half): {res.win_rate:.2f}{interval} over {res.judged} examples: "
                     f"{res.wins} won, {res.losses} lost, {res.ties} tied or order-dependent")
    else:
        lines.append("win rate of tuned: none (no example has a verdict in both orders)")
    lines.append(f"order disagreements: {res.order_disagreements} of {res.judged} examples changed verdict when A "
                 "and B swapped")
    lines.append(f"unparseable replies: {res.unparseable} (no final VERDICT line after every attempt; "
                 f"{res.unparseable_examples} example(s) left out of the win rate)")
    if res.missing:
        lines.append(f"not judged yet: {res.missing} request(s); run the same command again to ask them")
    lines.append(f"verdicts: {pairs.path}")
    return lines
