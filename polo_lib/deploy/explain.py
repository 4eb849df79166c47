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

Every check on the paper runs before a model loads: an unreadable file, a scanned PDF without a
text layer or a paper with nothing to explain costs a message, not a model load.
"""
from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .. import inference, prompts
from ..atomic import atomic_write_text
from ..errors import DataError, RunError
from ..metrics import english_term_spans, load_glossary
from ..notebook import say
from . import export

SUFFIXES = (".txt", ".md", ".pdf")
Kind = Literal["heading", "paragraph", "caption", "equation", "reference"]


@dataclass
class Block:
    kind: Kind
    text: str
    korean: str | None = None  # paragraphs only, once explained
    part: int = 0  # > 0: one of the pieces a paragraph over the length limit was cut into
    cut: bool = False  # its explanation ran to max_new_tokens: it stops there, unfinished


# ---------------------------------------------------------------- reading

def read_paper(path: str | Path) -> str:
    """The paper's text. DataError naming the file and the fix for a missing, unreadable or empty
    file, another format, or a PDF without a text layer (scanned pages)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file. Give a paper as .txt, .md or .pdf.")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: '{path.suffix or 'no suffix'}' is not a format polo explain reads; "
                        f"give {', '.join(SUFFIXES)} (save the paper as text or PDF first).")
    if path.suffix.lower() == ".pdf":
        text = _pdf_text(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 text, "
                            "or give the PDF.") from None
    if not text.strip():
        raise DataError(f"{path}: the paper is empty.")
    return text


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        # layout mode keeps the vertical gaps between paragraphs as blank lines (plain mode drops them)
        pages = [page.extract_text(extraction_mode="layout") or "" for page in reader.pages]
    except (PdfReadError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable PDF ({type(e).__name__}: {e}).") from None
    if pages and not any(p.strip() for p in pages):
        raise DataError(f"{path}: its {len(pages)} page(s) have no text layer (a scanned paper?). Run OCR on it "
                        "first (e.g. `ocrmypdf in.pdf out.pdf`), or give the paper as text.")
    return "\n\n".join(pages)


def resolve_paper(paper: str | Path | None) -> Path:
    """The paper's path: None for the project's own test paper; a relative path from the current
    folder, else from the repository root (the notebooks run in notebooks/)."""
    from .. import paths

    if paper is None:
        return paths.DATA_DIR / "papers" / "dense_detection_notes.md"
    path = Path(paper).expanduser()
    return path if path.is_absolute() or path.exists() else paths.PROJ_ROOT / path


def blocks_table(blocks: Sequence[Block]):
    """The blocks as a table (kind, words, the start of the text): what will be explained."""
    import pandas as pd

    return pd.DataFrame([{"kind": b.kind, "words": len(b.text.split()), "text": b.text[:80]} for b in blocks])


# ---------------------------------------------------------------- splitting

_HEADING_NUMBERED = re.compile(r"^(\d+(\.\d+)*\.?|[IVX]+\.)\s+\S.{0,80}$")
_CAPTION = re.compile(r"^(figure|fig\.|table)\s*\d+[a-z]?\s*[:.]", re.I)
_REFERENCE_ITEM = re.compile(r"^\[\d+\]\s")
_REFERENCES = re.compile(r"^(references|bibliography|works cited)$", re.I)


def classify(block: str) -> Kind:
    """What a block of the paper is (pure, table-tested): a heading (markdown '#', a numbered
    title, a short line without a full stop), a figure or table caption, an equation (display
    math, or more symbols than letters), a reference ('[12] ...'), or a paragraph to explain."""
    text = block.strip()
    one_line = "\n" not in text
    if text.startswith("#"):
        return "heading"
    if _CAPTION.match(text):
        return "caption"
    if _REFERENCE_ITEM.match(text):
        return "reference"
    if text.startswith(("$$", "\\[", "\\begin{equation")):
        return "equation"
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < 0.5:
        return "equation"
    if one_line and not text.endswith((".", "?", "!", ":", ";")) and (
            _HEADING_NUMBERED.match(text) or (len(text) <= 60 and len(text.split()) <= 8)):
        return "heading"
    return "paragraph"


def split_paper(text: str) -> list[Block]:
    """The paper as blocks, in order. Blocks are separated by blank lines; lines within one are
    joined (a PDF's or a wrapped text's line ends). Everything after a 'References' heading is
    kept as references."""
    blocks: list[Block] = []
    in_references = False
    for raw in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
        if not lines:
            continue
        joined = " ".join(lines)
        kind = classify(joined)
        if kind == "heading":
            title = joined.lstrip("#").strip()
            in_references = bool(_REFERENCES.match(re.sub(r"^[\d.]+\s*", "", title)))
            blocks.append(Block("heading", title))
        elif in_references or kind == "reference":
            blocks.append(Block("reference", "\n".join(lines)))
        elif kind == "equation":
            blocks.append(Block("equation", "\n".join(lines)))
        else:
            blocks.append(Block(kind, joined))
    return blocks


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def fit(blocks: Sequence[Block], tokenizer, max_seq_length: int, max_new_tokens: int) -> list[Block]:
    """Paragraphs whose Easy prompt + max_new_tokens would pass max_seq_length, cut at sentence
    ends into pieces that fit (a sentence too long alone is cut at words). Others unchanged."""
    room = max_seq_length - max_new_tokens

    def tokens(text: str) -> int:
        prompt = inference.prompt_text(tokenizer, prompts.build_messages(text))
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    if tokens("") >= room:
        raise RunError(f"the Easy prompt alone is {tokens('')} tokens: with max_new_tokens {max_new_tokens} nothing "
                       f"fits in max_seq_length {max_seq_length}. Lower max_new_tokens.")
    out: list[Block] = []
    for block in blocks:
        if block.kind != "paragraph" or tokens(block.text) <= room:
            out.append(block)
            continue
        sentences = [piece for sentence in _SENTENCE_END.split(block.text)  # one too long alone: cut at words
                     for piece in _pack(sentence.split(), tokens, room)]
        out += [Block("paragraph", p, part=i) for i, p in enumerate(_pack(sentences, tokens, room), 1)]
    return out


def _pack(units: list[str], tokens: Callable[[str], int], room: int) -> list[str]:
    """`units` (words or sentences) joined with spaces into as few pieces as fit in `room` tokens,
    in order; a unit that does not fit alone is a piece of its own."""
    out, current = [], ""
    for unit in units:
        candidate = f"{current} {unit}".strip()
        if current and tokens(candidate) > room:
            out.append(current)
            candidate = unit
        current = candidate
    return out + [current] if current else out


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


def check_paragraphs(blocks: Sequence[Block], paper: str | Path = "") -> list[Block]:
    """The paragraphs to explain; a DataError when there are none."""
    todo = [b for b in blocks if b.kind == "paragraph"]
    if not todo:
        raise DataError(f"{paper or 'the paper'}: no paragraph to explain (only headings, captions, "
                        "equations or references were found). Separate paragraphs with blank lines.")
    return todo


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


# ---------------------------------------------------------------- writing

def glossary_spans(text: str, korean: bool, glossary) -> list[tuple[int, int, int]]:
    """(start, end, glossary entry index) of each glossary term `text` uses, not overlapping: its English
    forms as the metrics match them (metrics.english_term_spans), in either column (an explanation keeps
    "YOLO", "ImageNet", "IoU"); in an explanation also each term's longest Korean rendering that occurs,
    everywhere it occurs."""
    spans = english_term_spans(text, glossary)
    if korean:
        for i, entry in enumerate(glossary):
            form = next((f for f in sorted(entry.ko, key=len, reverse=True) if f and f in text), None)
            spans += [(m.start(), m.end(), i) for m in re.finditer(re.escape(form), text)] if form else []
    kept: list[tuple[int, int, int]] = []
    for span in sorted(spans, key=lambda x: (x[0], x[0] - x[1])):  # by start, the longer first
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def hover(entry) -> str:
    """What a marked term says on hover: the glossary's Korean rendering and the English term
    ("겹치는 정도 (IoU)"); the English term alone for a name Korean keeps in English (R-CNN)."""
    return f"{entry.ko[0]} ({entry.en})" if entry.ko else entry.en


def _marked(text: str, korean: bool, glossary, html_out: bool) -> str:
    """`text` with each glossary term marked: **form** in Markdown, <mark title=hover> in HTML."""
    escape = html.escape if html_out else str
    out, last = [], 0
    for start, end, i in glossary_spans(text, korean, glossary):
        word = text[start:end]
        out += [escape(text[last:start]),
                f'<mark title="{html.escape(hover(glossary[i]))}">{html.escape(word)}</mark>' if html_out
                else f"**{word}**"]
        last = end
    return "".join(out) + escape(text[last:])


def cut_facts(result: Explained) -> str:
    """The page's line on explanations cut at max_new_tokens (empty when none was)."""
    if not result.cut:
        return ""
    more = say("--max-new-tokens", "max_new_tokens")
    return (f" {result.cut} of them reached the limit of {result.max_new_tokens} new tokens and stop unfinished, "
            f"marked \"cut off\": a larger {more} gives them room.")


def markdown(result: Explained, glossary) -> str:
    lines = [f"# {result.paper}: in easy Korean", "",
             f"Run `{result.run_id}` ({result.model}); {result.counts.get('paragraph', 0)} paragraphs explained in "
             f"{result.seconds} s ({result.tokens_per_s} tokens/s). Glossary terms are in bold.{cut_facts(result)}",
             ""]
    for b in result.blocks:
        if b.kind == "heading":
            lines += [f"## {b.text}", ""]
        elif b.kind == "paragraph":
            part = f" (part {b.part})" if b.part else ""
            lines += [f"**Original{part}**", "", _marked(b.text, False, glossary, False), "",
                      "**쉬운 설명**", "", _marked(b.korean or "", True, glossary, False), "",
                      *([f"*{inference.cut_note(result.max_new_tokens)}*", ""] if b.cut else []), "---", ""]
        elif b.kind == "equation":
            lines += ["```", b.text, "```", ""]
        else:
            lines += [f"> {line}" for line in b.text.splitlines()] + [""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.55}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1.5em;border-top:1px solid #ddd;padding:.8em 0}
.original{color:#333}.korean{color:#0b3d91}.kept{color:#666;font-size:.92em;white-space:pre-wrap}
mark{background:#fff3b0;padding:0 .1em}.cut{display:block;color:#a33;font-style:italic;margin-top:.4em}
h1{font-size:1.5em}h2{margin-top:1.6em}.facts{color:#555}"""


def to_html(result: Explained, glossary) -> str:
    parts = [f"<!doctype html><html lang='ko'><head><meta charset='utf-8'><title>{html.escape(result.paper)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(result.paper)}: in easy Korean</h1>",
             f"<p class='facts'>run <code>{html.escape(result.run_id)}</code> ({html.escape(result.model)}); "
             f"{result.counts.get('paragraph', 0)} paragraphs explained in {result.seconds} s "
             f"({result.tokens_per_s} tokens/s). Glossary terms are marked in both columns; hover for the "
             f"glossary's Korean term.{html.escape(cut_facts(result))}</p>"]
    for b in result.blocks:
        if b.kind == "heading":
            parts.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "paragraph":
            parts.append("<div class='pair'>"
                         f"<div class='original'>{_marked(b.text, False, glossary, True)}</div>"
                         f"<div class='korean'>{_marked(b.korean or '', True, glossary, True)}"
                         + (f"<span class='cut'>{html.escape(inference.cut_note(result.max_new_tokens))}</span>"
                            if b.cut else "") + "</div></div>")
        else:
            parts.append(f"<div class='kept {b.kind}'>{html.escape(b.text)}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
                            "tokens_per_s": result.tokens_per_s, "blocks": [asdict(b) for b in result.blocks]}
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
