"""polo draft: a paper's paragraphs drafted into easy Korean by a bigger teacher model, for a person to review.

  number       the paper's paragraphs (read and cut into blocks by explain's reader, deploy/papers.py) numbered
               by section: a heading's own number is section_major, paragraphs count section_minor within it
  messages     what the teacher reads: the Easy prompt, the glossary's Korean for the paragraph's terms, a few
               reviewed paragraphs of the project's data as examples, then the paragraph
  draft_paper  every paragraph not drafted yet asked concurrently (judge.Asker: retries with backoff on
               429/5xx/timeouts, the key from an environment variable, never written), each answer appended
               at once to a JSONL file in the paper schema with status "draft", source "teacher:<model>", the
               prompt's hash and the tokens used. Killed halfway, the next call drafts only what is missing;
               once every paragraph is in, the file is rewritten in id order (the same file an uninterrupted
               call writes).

Only reviewed records train: prepare refuses drafts (data/formats.py `reviewed`).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths, prompts
from ..atomic import append_line, atomic_write_text
from ..errors import DataError
from .papers import Block, read_paper, split_paper

SHOTS_FROM = "data/raw/yolo_v1.json"  # reviewed paragraphs the teacher sees as examples
NUMBERED = re.compile(r"^\s*(\d+)(?:\.\d+)*[.)]?\s")


@dataclass(frozen=True)
class Unit:
    """One paragraph to draft: its record id ("major.minor.1": a paragraph is one record) and text."""
    id: str
    section_major: int
    section_minor: int
    text: str


def number(blocks: list[Block]) -> list[Unit]:
    """The paragraphs numbered by section: a heading that starts with a number ("2. Method", "2.1 Loss") sets
    section_major; an unnumbered one (Abstract, the title) keeps the current one (1 before any number);
    section_minor counts the paragraphs within a major."""
    major, minor, units = 1, 0, []
    for b in blocks:
        if b.kind == "heading":
            m = NUMBERED.match(b.text + " ")
            if m and int(m.group(1)) >= 1 and int(m.group(1)) != major:
                major, minor = int(m.group(1)), 0
        elif b.kind == "paragraph":
            minor += 1
            units.append(Unit(f"{major}.{minor}.1", major, minor, b.text))
    return units


def shots(k: int) -> list[tuple[str, str]]:
    """The first `k` paragraphs of the project's reviewed data (English, easy Korean): the teacher's examples."""
    from ..data import group_paragraphs, load_raw

    return [(p.original, p.simplified) for p in group_paragraphs(load_raw(SHOTS_FROM))[:k]]


def prompt_hash(examples: list[tuple[str, str]]) -> str:
    """12 hex digits of what every request shares: the Easy prompt, the user template, the examples and the
    glossary file. Recorded on each draft, so drafts of another prompt are told apart."""
    glossary = paths.DATA_DIR / "glossary.yaml"
    body = {"system": prompts.SYSTEM_PROMPT, "user": prompts.USER_TEMPLATE, "shots": examples,
            "glossary": hashlib.sha256(glossary.read_bytes()).hexdigest() if glossary.is_file() else None}
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:12]


def messages(text: str, examples: list[tuple[str, str]], glossary) -> list[dict[str, str]]:
    """The teacher's chat: the Easy prompt (with the glossary's Korean for this paragraph's terms), the examples
    as earlier turns, then the paragraph, as the model being trained will be asked it."""
    from ..metrics import english_term_spans

    terms = sorted({glossary[i].en + " = " + " / ".join(glossary[i].ko)
                    for _, _, i in english_term_spans(text, glossary) if glossary[i].ko})
    system = prompts.SYSTEM_PROMPT + (f"\n\nGlossary for this paragraph: {'; '.join(terms)}." if terms else "")
    turns = [{"role": "system", "content": system}]
    for original, simplified in examples:
        turns += [{"role": "user", "content": prompts.user_message(original)},
                  {"role": "assistant", "content": simplified}]
    return turns + [{"role": "user", "content": prompts.user_message(text)}]


def read_drafts(path: Path) -> list[dict[str, Any]]:
    """The records of a drafts file; a line cut by a crash (not JSON) is skipped: its paragraph is drafted
    again."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            out.append(record)
    return out


@dataclass
class Drafted:
    """What one draft_paper call did."""
    path: Path
    paragraphs: int
    drafted: int
    skipped: int  # drafted by an earlier call
    failed: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    http_retries: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed and self.drafted + self.skipped == self.paragraphs


def _sort_key(record: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(x) for x in record["id"].split(".") if x.isdigit())


def write_note(out: Path, paper: Path, model: str, p_hash: str, n_shots: int) -> Path:
    """The drafts file's note beside it (<drafts>.md, the dataset card's source for it), unless one is there:
    where the records come from and that the paper's licence is for a person to state."""
    note = out.with_suffix(".md")
    if not note.exists():
        atomic_write_text(note, f"# `{out.name}`\n\nDrafted by `polo draft` from `{paper}`: each paragraph of the "
                                f"paper asked of the teacher `{model}` (prompt hash `{p_hash}`, {n_shots} reviewed "
                                "examples from `data/raw/yolo_v1.json`). Records carry `status: draft` until a "
                                "person reviews them (notebooks/review_data.ipynb).\n\nThe paper's licence is "
                                "not stated yet: add the sentence that states it, as data/README.md does, before "
                                "sharing the data.\n")
    return note


def teacher(url: str | None, model: str | None, api_key_env: str | None = None, max_tokens: int = 1024,
            temperature: float = 0.3, timeout_s: float = 120.0):
    """The teacher endpoint (judge.Asker, as `polo judge` asks its judge), its key read from the environment
    variable named; a ParamsError naming what is missing or out of range, before anything is asked."""
    from ..errors import ParamsError
    from ..judge import Asker, read_key

    if not url or not model:
        raise ParamsError("the teacher needs its endpoint URL (--teacher, or teacher in the notebook) and its model "
                          "name (--model), e.g. http://127.0.0.1:8000/v1 and the name the server lists")
    if max_tokens < 1 or timeout_s <= 0:
        raise ParamsError(f"max_tokens ({max_tokens}) must be at least 1 and the timeout ({timeout_s}) above 0")
    return Asker(url, model, read_key(api_key_env), max_tokens=max_tokens, temperature=temperature,
                 timeout_s=timeout_s, role="teacher")


def units_table(units: list[Unit]):
    """The paragraphs to draft, one row each: id, section numbers, the start of the text."""
    import pandas as pd

    return pd.DataFrame([{"id": u.id, "section_major": u.section_major, "section_minor": u.section_minor,
                          "text": u.text[:100] + ("..." if len(u.text) > 100 else "")} for u in units]).set_index("id")


def drafts_table(path: str | Path):
    """A drafts file, one row a record: id, status, tokens, the English and the draft (their starts)."""
    import pandas as pd

    rows = [{"id": r["id"], "status": r.get("status"), "tokens": r.get("tokens"), "original": r["original"][:80],
             "simplified": r["simplified"][:80]} for r in read_drafts(Path(path))]
    return pd.DataFrame(rows, columns=["id", "status", "tokens", "original", "simplified"]).set_index("id")


def default_output(paper: str | Path) -> Path:
    return paths.DATA_DIR / "raw" / f"{Path(paper).stem}.jsonl"


def draft_paper(paper: str | Path, asker, out: str | Path | None = None, n_shots: int = 2, concurrency: int = 4,
                on_record: Callable[[dict[str, Any]], None] | None = None, show_progress: bool = True) -> Drafted:
    """Draft every paragraph of `paper` not in `out` yet (default data/raw/<paper>.jsonl), `concurrency` requests
    at a time; each answer appended at once. A request that fails for good (after its retries) is listed and
    not written: the next call asks it again."""
    from tqdm.auto import tqdm

    from ..metrics import load_glossary

    path = Path(paper)
    units = number(split_paper(read_paper(path)))
    if not units:
        raise DataError(f"{path}: no paragraph to draft (only headings, captions, equations or references)")
    out = Path(out) if out else default_output(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    examples, glossary = shots(n_shots), load_glossary()
    p_hash = prompt_hash(examples)
    write_note(out, path, asker.model, p_hash, n_shots)
    done = {r["id"] for r in read_drafts(out)}
    todo = [u for u in units if u.id not in done]
    result = Drafted(out, len(units), 0, len(units) - len(todo))
    lock, start = threading.Lock(), time.perf_counter()
    bar = tqdm(total=len(units), initial=result.skipped, desc=f"drafting {path.name}", unit="paragraph",
               file=sys.stderr, disable=not show_progress)

    def one(unit: Unit) -> None:
        from ..judge import _Failed

        try:
            text, tokens = asker.ask_counted(messages(unit.text, examples, glossary))
        except _Failed as e:
            with lock:
                result.failed.append(f"{unit.id}: {e}")
            return
        if not text.strip():
            with lock:
                result.failed.append(f"{unit.id}: the teacher answered nothing")
            return
        record = {"id": unit.id, "section_major": unit.section_major, "section_minor": unit.section_minor,
                  "original": unit.text, "simplified": text.strip(), "status": "draft",
                  "source": f"teacher:{asker.model}", "prompt_hash": p_hash, "tokens": tokens}
        with lock:
            append_line(out, json.dumps(record, ensure_ascii=False))
            result.drafted += 1
            result.tokens += tokens or 0
            seconds = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix_str(f"{result.tokens / seconds:.0f} tokens/s" if seconds else "")
        if on_record:
            on_record(record)

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(one, u) for u in todo]:
                future.result()
    finally:
        bar.close()
    result.seconds = round(time.perf_counter() - start, 1)
    result.http_retries = asker.retried
    result.failed.sort()
    if result.complete:  # every paragraph in: the file in id order, as one uninterrupted call leaves it
        records = sorted(read_drafts(out), key=_sort_key)
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return result
