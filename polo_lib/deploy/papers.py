"""A paper read for `polo explain`: .txt / .md as they are, .pdf through its text layer, split into
blocks (paragraphs to explain; headings, captions, equations, references kept), fitted to max_seq_length."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import inference, prompts
from ..errors import DataError, RunError

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


def check_paragraphs(blocks: Sequence[Block], paper: str | Path = "") -> list[Block]:
    """The paragraphs to explain; a DataError when there are none."""
    todo = [b for b in blocks if b.kind == "paragraph"]
    if not todo:
        raise DataError(f"{paper or 'the paper'}: no paragraph to explain (only headings, captions, "
                        "equations or references were found). Separate paragraphs with blank lines.")
    return todo
