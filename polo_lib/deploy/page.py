"""The explained paper as pages: Markdown and HTML with the original and the easy Korean side by
side, glossary terms marked, and an explanation cut at max_new_tokens marked "cut off"."""
from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from .. import inference
from ..metrics import english_term_spans
from ..notebook import say

if TYPE_CHECKING:
    from .explain import Explained


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


def loop_facts(result: Explained) -> str:
    """The page's line on explanations that loop (empty when none does)."""
    loops = result.loops()
    if not loops.get("looping"):
        return ""
    return (f" {loops['looping']} of {loops['paragraphs']} explanations repeat a phrase of more than 6 tokens (a "
            f"loop; the longest repeat is {loops['longest_repeat_mean']} tokens on average).")


def markdown(result: Explained, glossary) -> str:
    lines = [f"# {result.paper}: in easy Korean", "",
             f"Run `{result.run_id}` ({result.model}); {result.counts.get('paragraph', 0)} paragraphs explained in "
             f"{result.seconds} s ({result.tokens_per_s} tokens/s). Glossary terms are in bold.{cut_facts(result)}"
             f"{loop_facts(result)}",
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
             f"glossary's Korean term.{html.escape(cut_facts(result) + loop_facts(result))}</p>"]
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
