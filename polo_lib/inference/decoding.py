"""Token ids to text: a Generation, text_of (never half a character), the cut notes, stop strings,
and the streaming writer that hands each row's text out as generate writes it."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # the batch's wall time shared equally by its examples
    stopped: bool = False  # ended at EOS or a stop string (OpenAI finish_reason "stop"), not at max_new_tokens
    batch_size: int = 1  # the batch it was generated in (smaller than asked after running out of memory)
    cancelled: bool = False  # stopped by its caller (a client gone away): the text written until then

    @property
    def cut(self) -> bool:
        """Ran to max_new_tokens without ending (OpenAI's finish_reason "length"): the text stops
        wherever the cap fell, often mid-word, and a reader must be told (shown_text)."""
        return not (self.stopped or self.cancelled)


BROKEN = "\ufffd"  # what decoding makes of bytes that are not a whole UTF-8 character


def _gpt2_bytes() -> dict[str, int]:
    """The byte each character of a byte-level BPE vocabulary stands for (GPT-2's table, used by
    SmolLM2, Llama 3, Qwen): printable Latin-1 characters stand for themselves, the other bytes
    for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(others)}}


_BYTE_OF = _gpt2_bytes()


def _token_bytes(tokenizer, ids: Sequence[int]) -> bytes | None:
    """The bytes `ids` spell, special tokens skipped, read as tokenizers' ByteLevel decoder reads
    them (a token with a character outside GPT-2's table counts as its UTF-8); None without a
    `tokenizers` backend. On a tokenizer that is not byte-level these are not its bytes: text_of
    checks them against the tokenizer's own decoding before trusting them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    special = {i for i, added in backend.get_added_tokens_decoder().items() if added.special}
    out = bytearray()
    for i in ids:
        token = None if i in special else backend.id_to_token(i)
        if token is not None:
            out += bytes(_BYTE_OF[c] for c in token) if all(c in _BYTE_OF for c in token) else token.encode()
    return bytes(out)


def text_of(tokenizer, ids: Sequence[int]) -> str:
    """`ids` as text (special tokens skipped), without the U+FFFD that stand for bytes forming no
    character: the first bytes of a Hangul syllable cut off by max_new_tokens at the end (a syllable
    is 3 bytes, often 2 tokens on a byte-level BPE), or bytes the model wrote out of order in the
    middle ("때\ufffdmarked" becomes "때marked"). Those decode to nothing.

    The rule for a U+FFFD: where the tokens can be read as bytes (byte-level BPE, checked against
    the tokenizer's own decoding), one the model wrote as a whole character (its 3 bytes EF BF BD)
    is text and stays; only bytes that form no character go. On any other tokenizer the two cannot
    be told apart after decoding, and every U+FFFD goes. Either way the text of a growing list of
    ids only grows (a character's first bytes show nothing until the rest come, and bytes that
    never form one never show): what streaming relies on.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if BROKEN not in text:
        return text
    raw = _token_bytes(tokenizer, ids)
    if raw is not None and raw.decode("utf-8", "replace") == text:
        return raw.decode("utf-8", "ignore")
    return text.replace(BROKEN, "")


def whole_text(tokenizer, ids: list[int]) -> str:
    """A finished answer's text: text_of without the whitespace around it."""
    return text_of(tokenizer, ids).strip()


def cut_note(max_new_tokens: int) -> str:
    """What a reader sees after an answer that ran to max_new_tokens (chat, the explain page,
    evaluation's examples): without it an answer stopped mid-word looks finished."""
    return f"[cut off at the limit of {max_new_tokens} new tokens]"


_CUT_NOTE = re.compile(r"\s*\[cut off at the limit of \d+ new tokens\]\s*$")


def shown_text(gen: Generation) -> str:
    """An answer as a person reads it: its text, and on a line of its own the cut note when it ran
    to max_new_tokens (its new tokens are then that limit)."""
    return f"{gen.text}\n\n{cut_note(gen.new_tokens)}" if gen.cut else gen.text


def without_cut_note(text: str) -> str:
    """A shown answer's text without its cut note (a chat's history goes back to the model as written)."""
    return _CUT_NOTE.sub("", text)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the first of the `stop` strings it contains, and whether it
    contained one (OpenAI's `stop`: the answer ends there and the stop string is not returned)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def showable(text: str, stop: Sequence[str] = (), strip: bool = True) -> str:
    """The start of an unfinished answer's text that no later token can change (pure, table-tested):
    without a U+FFFD at the end (held until the answer goes on or ends: text_of has dropped loose
    bytes already, this keeps a raw decoding's from showing too), without the
    whitespace around it that the finished answer strips (whole_text), and without an ending
    that may still grow into a stop string (it would then be cut away). So the pieces streamed add
    up to the finished answer's text exactly. `strip=False` (a plain prompt's continuation, whose
    leading space matters) keeps the whitespace."""
    text = text.rstrip(BROKEN)
    text = text.lstrip() if strip else text
    longest = max((len(s) for s in stop), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop):
            text = text[:-k]
            break
    return text.rstrip() if strip else text


class _Answer:
    """One answer being written: its new token ids, how it ended, the text handed out so far."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.end: str | None = None  # "eos", "stop" (a stop string), "cancelled"; None while it is written
        self.shown = ""  # what on_text was given: always the start of the finished text
        self.result: Generation | None = None

    def restart(self) -> None:
        """Written again after running out of memory: the ids start over, `shown` stays (handed out)."""
        self.ids, self.end = [], None


class _Writer:
    """The rows of one model.generate call, as transformers' streamer and a stopping criterion.

    generate hands put() each step's new token of every row (BaseStreamer's contract: the prompt
    first, then one token per row per step); put() keeps each row's ids, hands new text to
    `on_text` (decoding the row's ids so far, so a character split over tokens is never shown
    half), notices a stop string and calls `on_done` the moment a row ends, not when the batch
    does. As a stopping criterion (called by generate before each put) it answers, per row, whether
    that row is finished: a row cut at a stop string or cancelled by its caller gets only padding
    from then on, and once every row is finished generate returns at once.
    """

    def __init__(self, tokenizer, answers: list[_Answer], indices: list[int], stop: Sequence[str],
                 on_text: Callable[[int, str], None] | None, on_done: Callable[[int, Generation], None] | None,
                 cancelled: Callable[[int], bool] | None, batch_size: int, strip: bool = True) -> None:
        self.strip = strip
        self.batch_size = batch_size  # the size asked for (the last batch may hold fewer rows)
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id
        self.answers, self.indices, self.stop = answers, indices, tuple(s for s in stop if s)
        self.on_text, self.on_done, self.cancelled = on_text, on_done, cancelled
        self.decode_each_step = bool(self.stop or on_text)  # else the text is decoded once, at the end
        self.start = time.perf_counter()

    # ------------------------------------------------ transformers' BaseStreamer
    def put(self, value) -> None:
        if value.dim() > 1:  # the prompts, handed over once before the first step
            return
        for index, token in zip(self.indices, value.tolist()):
            answer = self.answers[index]
            if answer.end is not None:  # padding after its end
                continue
            answer.ids.append(token)
            if token == self.eos:
                answer.end = "eos"
            elif self.decode_each_step:
                text, hit = cut_at_stop(text_of(self.tokenizer, answer.ids), self.stop)
                if hit:
                    answer.end = "stop"
                else:
                    self._show(index, showable(text, self.stop, self.strip))
            if answer.end is not None:
                self.finish(index)

    def end(self) -> None:
        """generate is done; rows still open ran to max_new_tokens (finish_rest ends them)."""

    # ------------------------------------------------ transformers' StoppingCriteria
    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        if self.cancelled is not None:
            for index in self.indices:
                if self.answers[index].end is None and self.cancelled(index):
                    self.answers[index].end = "cancelled"
                    self.finish(index)
        return torch.tensor([self.answers[i].end is not None for i in self.indices], device=input_ids.device)

    # ------------------------------------------------
    def _show(self, index: int, text: str) -> None:
        answer = self.answers[index]
        if len(text) > len(answer.shown) and text.startswith(answer.shown):
            piece, answer.shown = text[len(answer.shown):], text
            if self.on_text is not None:
                self.on_text(index, piece)

    def finish(self, index: int, seconds: float | None = None) -> None:
        """The row's Generation (and the rest of its text to on_text, then on_done)."""
        answer = self.answers[index]
        text, _ = cut_at_stop(text_of(self.tokenizer, answer.ids), self.stop)
        text = text.strip() if self.strip else text  # as whole_text
        if text.startswith(answer.shown):
            self._show(index, text)
        else:  # a tokenizer whose decoding of more ids rewrites earlier text; what was shown stays shown
            log.warning("the streamed text of answer %d is not the start of its final text", index)
        elapsed = time.perf_counter() - self.start if seconds is None else seconds
        answer.result = Generation(text, len(answer.ids), round(elapsed / len(self.indices), 3),
                                   answer.end in ("eos", "stop"), self.batch_size, answer.end == "cancelled")
        if self.on_done is not None:
            self.on_done(index, answer.result)

    def finish_rest(self, seconds: float) -> None:
        """After generate: rows still open ran to max_new_tokens; every row's seconds become the
        batch's wall time shared equally (what evaluation records)."""
        for index in self.indices:
            answer = self.answers[index]
            if answer.end is None:
                answer.end = "length"
                self.finish(index, seconds)
            else:
                answer.result = replace(answer.result, seconds=round(seconds / len(self.indices), 3))
