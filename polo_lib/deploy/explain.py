"""`polo explain RUN PAPER`: a whole paper in easy Korean, paragraph by paragraph, side by side.

    read_paper    .txt / .md as they are, .pdf through its text layer (pypdf)
    split_paper   blocks: paragraphs to explain; headings, captions, equations and references
                  kept as they are (never sent to the model)
    fit           a paragraph whose prompt + answer would pass max_seq_length is cut at sentence ends
    explain       every paragraph with the Easy prompt training used, in batches (adapter, merged
                  export, or a running `polo serve`), the paragraph being written shown live
    write         <run>/explained/<paper>.md and .html (original and easy Korean side by side,
                  glossary terms marked, an explanation cut at max_new_tokens marked "cut off")
                  and .json (the blocks, each with `cut`, and the figures)

Reading, splitting and fitting live in papers, the Markdown and HTML pages in page; every name is still
importable from here.

Every check on the paper runs before a model loads: an unreadable file, a scanned PDF without a
text layer or a paper with nothing to explain costs a message, not a model load.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import inference, prompts
from ..atomic import atomic_write_text
from ..errors import RunError
from ..metrics import load_glossary
from ..notebook import say
from . import export
from .page import cut_facts, glossary_spans, hover, markdown, to_html  # noqa: F401
from .papers import (  # noqa: F401
    SUFFIXES,
    Block,
    Kind,
    blocks_table,
    check_paragraphs,
    classify,
    fit,
    read_paper,
    resolve_paper,
    split_paper,
)

# ---------------------------------------------------------------- explaining

@dataclass
class Explained:
    """A paper explained: its blocks and the figures of the run."""
    paper: str
    run_id: str
    model: str  # adapter, merged, or the server's URL
    blocks: list[Block]
    seconds: float
    new_tokens: int
    max_new_tokens: int = 0  # the limit each explanation had (the cut ones reached it)

    @property
    def cut(self) -> int:
        """How many explanations reached max_new_tokens and stop unfinished."""
        return sum(b.cut for b in self.blocks)

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for b in self.blocks:
            found[b.kind] = found.get(b.kind, 0) + 1
        return found

    @property
    def tokens_per_s(self) -> float | None:
        return round(self.new_tokens / self.seconds, 1) if self.seconds else None

    def loops(self) -> dict[str, Any]:
        """How much the explanations repeat themselves, by the evaluation's own style metrics: per paragraph the
        longest repeated phrase (Korean tokens) and distinct-2, their means, and how many paragraphs loop (a
        repeat longer than metrics.style.NATURAL_REPEAT, the references' natural range). Empty when nothing was
        explained."""
        from ..metrics import distinct_n, longest_repeated_ngram
        from ..metrics.style import NATURAL_REPEAT

        texts = [b.korean for b in self.blocks if b.kind == "paragraph" and b.korean is not None]
        if not texts:
            return {}
        repeats = [longest_repeated_ngram(t) for t in texts]
        distinct = [distinct_n([t], 2) for t in texts]
        return {"paragraphs": len(texts), "looping": sum(r > NATURAL_REPEAT for r in repeats),
                "longest_repeat_mean": round(sum(repeats) / len(texts), 2),
                "distinct_2_mean": round(sum(distinct) / len(texts), 4),
                "longest_repeat": repeats, "distinct_2": [round(d, 4) for d in distinct]}


# (chats, max_new_tokens, batch_size) -> [(text, new tokens, cut at max_new_tokens)]
Answer = Callable[[list[list[dict[str, str]]], int, int], list[tuple[str, int, bool]]]


class LiveLine:
    """A progress bar over the paragraphs whose postfix shows the paragraph being written, as it is
    written (the lowest-numbered one of those in progress, so the line does not jump between the
    rows of a batch): on the CPU demo a batch takes minutes, and a bar alone looks stuck."""

    def __init__(self, total: int, desc: str = "explaining", width: int = 48, every_s: float = 0.1, file=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="paragraph", file=file)
        self.width, self.every_s, self.shown_at = width, every_s, 0.0
        self.writing: dict[int, str] = {}
        self.lock = threading.Lock()  # a server's answers arrive on several threads

    def text(self, index: int, piece: str) -> None:
        with self.lock:
            self.writing[index] = self.writing.get(index, "") + piece
            self._show(force=False)

    def done(self, index: int) -> None:
        with self.lock:
            self.writing.pop(index, None)
            self.bar.update(1)
            self._show(force=True)

    def _show(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self.shown_at < self.every_s:  # a token every few ms: redraw 10 times a second
            return
        self.shown_at = now
        if self.writing:
            index = min(self.writing)
            tail = " ".join(self.writing[index].split())[-self.width:]
            self.bar.set_postfix_str(f"¶{index + 1}: {tail}", refresh=False)
        else:
            self.bar.set_postfix_str("", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def local_answer(lm, progress: str = "explaining", **line_options) -> Answer:
    """Answers from a loaded model through inference.generate: batched, greedy, stopping at the
    training EOS, with a live line (paragraphs done, the one being written; LiveLine's options)."""
    def answer(chats, max_new_tokens, batch_size):
        line = LiveLine(len(chats), progress, **line_options)
        try:
            gens = inference.generate(lm, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      on_text=line.text, on_done=lambda i, _: line.done(i))
        finally:
            line.close()
        return [(g.text, g.new_tokens, g.cut) for g in gens]
    return answer


def server_answer(url: str, api_key: str | None, **line_options) -> tuple[Answer, str]:
    """Answers from a running `polo serve` (one streamed request per paragraph, `batch_size` at once:
    the server batches them), with the same live line, and the model id it serves."""
    from .chat_app import connect

    remote = connect(url, api_key).tuned

    def answer(chats, max_new_tokens, batch_size):
        import concurrent.futures as cf

        line = LiveLine(len(chats), **line_options)

        def one(index: int) -> tuple[str, int, bool]:
            pieces, tokens, finish = [], 0, None
            with remote.client().chat.completions.create(
                    model=remote.model_id, messages=chats[index], max_tokens=max_new_tokens, stream=True,
                    stream_options={"include_usage": True}) as stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                        line.text(index, pieces[-1])
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            line.done(index)
            return "".join(pieces), tokens, finish == "length"
        try:
            with cf.ThreadPoolExecutor(batch_size) as pool:
                return list(pool.map(one, range(len(chats))))
        finally:
            line.close()
    return answer, remote.model_id



def explain(blocks: Sequence[Block], answer: Answer, max_new_tokens: int, batch_size: int,
            paper: str = "", run_id: str = "", model: str = "adapter") -> Explained:
    """Every paragraph through `answer` with the Easy prompt; other blocks as they are."""
    todo = check_paragraphs(blocks, paper)
    start = time.perf_counter()
    answers = answer([prompts.build_messages(b.text) for b in todo], max_new_tokens, batch_size)
    seconds = time.perf_counter() - start
    done = [Block(**asdict(b)) for b in blocks]
    for block, (text, _, cut) in zip([b for b in done if b.kind == "paragraph"], answers):
        block.korean, block.cut = text, cut
    return Explained(paper, run_id, model, done, round(seconds, 1), sum(a[1] for a in answers), max_new_tokens)


def output_paths(run, paper: str | Path) -> dict[str, Path]:
    stem = Path(paper).stem
    return {suffix: run.path / "explained" / f"{stem}.{suffix}" for suffix in ("md", "html", "json")}


def check_outputs(run, paper: str | Path, overwrite: bool) -> None:
    """Refused before any work when an explanation of this paper exists (unless overwrite)."""
    existing = [p for p in output_paths(run, paper).values() if p.exists()]
    if existing and not overwrite:
        raise RunError(f"{existing[0]} already exists: " + say("pass --force", "pass overwrite=True")
                       + " to replace it.")


def write(result: Explained, run, paper: str | Path) -> dict[str, Path]:
    """explained/<paper>.md, .html and .json in the run folder (each written atomically)."""
    out, glossary = output_paths(run, paper), load_glossary()  # the glossary read once for both pages
    atomic_write_text(out["md"], markdown(result, glossary))
    atomic_write_text(out["html"], to_html(result, glossary))
    body: dict[str, Any] = {"paper": result.paper, "run_id": result.run_id, "model": result.model,
                            "counts": result.counts, "seconds": result.seconds, "new_tokens": result.new_tokens,
                            "max_new_tokens": result.max_new_tokens, "cut": result.cut,
                            "tokens_per_s": result.tokens_per_s, "loops": result.loops(),
                            "blocks": [asdict(b) for b in result.blocks]}
    atomic_write_text(out["json"], json.dumps(body, ensure_ascii=False, indent=1))
    return out


def explain_paper(run, paper: str | Path, blocks: Sequence[Block] | None = None, merged: bool = False,
                  server: str | None = None, api_key: str | None = None, max_new_tokens: int | None = None,
                  batch_size: int | None = None, overwrite: bool = False) -> tuple[Explained, dict[str, Path]]:
    """The whole command: read and split the paper (every check first; `blocks` when the caller
    split it already), load the model (or connect to the server), fit, explain, write."""
    check_outputs(run, paper, overwrite)
    blocks = split_paper(read_paper(paper)) if blocks is None else blocks
    check_paragraphs(blocks, paper)
    if not server:  # the model is there before the paper is cut to its length
        export.require_merged(run) if merged else inference.require_adapter(run)
    cfg = run.params()
    n_new = max_new_tokens or cfg.evaluation.max_new_tokens
    batch = batch_size or cfg.evaluation.batch_size
    tokenizer = inference.run_tokenizer(run)
    blocks = fit(blocks, tokenizer, cfg.model.max_seq_length, n_new)
    if server:
        answer, model = server_answer(server, api_key)
    else:
        from tqdm.auto import tqdm

        model = "merged" if merged else "adapter"
        with tqdm(total=1, desc=f"loading run {run.id}: {model}", unit="model") as bar:  # minutes for a 3B model
            lm = export.load_merged(run, cfg) if merged else inference.load_tuned(cfg, run)
            bar.update(1)
        answer = local_answer(inference.with_tokenizer(lm, tokenizer))
    result = explain(blocks, answer, n_new, batch, Path(paper).name, run.id, model)
    return result, write(result, run, paper)
