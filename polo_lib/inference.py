"""Generation and model loading for inference: what evaluation, training samples, export checks,
the server and the chat app share.

  placement   pick_input_device, input_device, encode_prompts: token ids go where the model
              reads them (Unsloth's fast generation does not move them)
  generation  Generation, prompt_text, generate (batched, left padding, stops at EOS) and
              generate_prompts (streaming: text as it comes, stop strings, seed, cancelling),
              whole_text / showable (never half a character), chats_of, answers_of,
              check_generates (one greedy answer from a reloaded export)
  loading     load_base, load_tuned (base + a run's adapter/), merge_to_16bit, load_merged, run_tokenizer (the
              chat template and EOS training used), with_tokenizer, require_adapter,
              reload_options and reload_and_check (an export reloaded and answering), free_memory

A run is passed in, never looked up: this module sits beside model and device and imports nothing
above them (runs, evaluate, train, deploy). A run here is anything with `id` and `adapter` (its
adapter/ folder), such as runs.Run.
"""
from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import device as device_lib
from . import local_models, prompts
from . import model as model_lib
from .errors import ModelError, RunError
from .progress import GenerationBar

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


# ---------------------------------------------------------------- where token ids go

def pick_input_device(embedding_device, model_device):
    """Where token ids must go: the input embeddings' device, else the model's (pure, table-tested).

    A model spread over devices (device_map "auto") looks token ids up where its embeddings
    are, which need not be `model.device` (the first parameter's); a meta embedding (offloaded
    weights) says nothing, so the model's device decides then.
    """
    import torch

    for candidate in (embedding_device, model_device):
        if candidate is not None and torch.device(candidate).type != "meta":
            return torch.device(candidate)
    for candidate in (embedding_device, model_device):
        if candidate is not None:
            return torch.device(candidate)
    raise ModelError("cannot tell which device the model is on: it has neither input embeddings nor a "
                     "`device`. Pass a transformers / PEFT model.")


def input_device(model):
    """The device `model.generate` needs its inputs on (see pick_input_device)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    weight = getattr(embeddings, "weight", None)
    return pick_input_device(getattr(weight, "device", None), getattr(model, "device", None))


def encode_prompts(tokenizer, texts: Sequence[str], model):
    """Token ids (left padding as the tokenizer is set) on the model's input device.

    Every generate call in polo_lib encodes through here: Unsloth's fast generation
    (`_fast_prepare_inputs_for_generation`) keeps input_ids on the device they come on, so CPU
    tensors given to a CUDA model fail instead of being moved.
    """
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.to(input_device(model))


# ---------------------------------------------------------------- generation

def prompt_text(tokenizer, chat: list[dict[str, str]]) -> str:
    """The prompt string a chat becomes: the tokenizer's chat template with the generation prompt."""
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def _generate_ids(model, tokenizer, texts: Sequence[str], max_new_tokens: int,
                  **options) -> tuple[list[list[int]], float]:
    """The new token ids of each prompt (padding and EOS included) and the seconds model.generate took.
    `options`: sampling settings, and generate's own streamer / stopping_criteria."""
    import torch

    enc = encode_prompts(tokenizer, texts, model)  # on the model's device (CPU ids fail on CUDA)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **options)
    seconds = time.perf_counter() - start
    return out[:, enc["input_ids"].shape[1]:].tolist(), seconds


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    """New ids up to and including the first EOS (what follows is padding)."""
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def _decoded(tokenizer, ids: list[int], seconds: float, batch_size: int = 1) -> Generation:
    """One row of new ids as text, cut after the first EOS."""
    answer = _until_eos(ids, tokenizer.eos_token_id)
    return Generation(whole_text(tokenizer, answer), len(answer), seconds, answer[-1:] == [tokenizer.eos_token_id],
                      batch_size)




def _smaller_batch(size: int, asked: int, max_new_tokens: int, error: BaseException) -> int:
    """Half of `size` after running out of memory at it (memory freed first); at 1, a ModelError."""
    free_memory()
    if size == 1:
        raise ModelError(f"out of memory generating even one answer at a time ({type(error).__name__}; batch size "
                         f"{asked} halved down to 1): lower max_new_tokens ({max_new_tokens}), or use a smaller "
                         "or 4-bit model.") from None
    log.warning("out of memory generating %d answers at once: trying %d", size, size // 2)
    return size // 2


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


def generate(lm, chats: Sequence[list[dict[str, str]]], max_new_tokens: int = 128, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             progress: str | None = None,
             on_batch: Callable[[int, int, int, float], None] | None = None, **streaming) -> list[Generation]:
    """Answers for chats (system + user), batched with left padding, stopping at EOS.

    Greedy by default, so two runs (or base vs tuned) are compared on decoding-noise-free text.
    `on_batch(done, total, new tokens so far, seconds so far)` after each batch (a progress file).
    Out of memory in a batch: the batch size is halved, for that batch and the rest, and the batch
    tried again, down to 1 (each Generation says the batch size it got); out of memory at 1 is a
    ModelError naming what to lower. `streaming`: stop, seed, on_text, on_done, cancelled, as
    generate_prompts takes them.
    """
    return generate_prompts(lm, [prompt_text(lm.tokenizer, chat) for chat in chats], max_new_tokens, batch_size,
                            do_sample, temperature, top_p, progress, on_batch, **streaming)


def generate_prompts(lm, texts: Sequence[str], max_new_tokens: int = 128, batch_size: int = 8,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     progress: str | None = None,
                     on_batch: Callable[[int, int, int, float], None] | None = None,
                     stop: Sequence[str] = (), seed: int | None = None,
                     on_text: Callable[[int, str], None] | None = None,
                     on_done: Callable[[int, Generation], None] | None = None,
                     cancelled: Callable[[int], bool] | None = None, strip: bool = True) -> list[Generation]:
    """generate for prompt strings as given (a chat already rendered, or a plain prompt).

    Streaming, for the server and the chat app (index: the prompt's position in `texts`):
      on_text(index, piece)   each new piece of an answer's text as it is generated, never half
                              a character; the pieces add up to the Generation's text
      on_done(index, gen)     the moment an answer ends (EOS, stop string, cancelled, max tokens)
      cancelled(index)        asked every step: True stops that answer there (a client gone away);
                              a batch whose answers are all stopped returns at once
    `strip=False` keeps the whitespace around an answer (a plain prompt's continuation: " Paris"
    after "The capital of France is"); chat answers are stripped, as evaluation scores them.
    `stop`: strings that end an answer (not included in its text; Generation.stopped). `seed`
    (sampling only): torch's generator is seeded before each batch, so the same prompts in the same
    batch sample the same answers.
    """
    import torch
    from transformers import StoppingCriteriaList
    from unsloth import FastLanguageModel

    tok, model = lm.tokenizer, lm.model
    # Left as found: a model in training (samples during training) goes back to training, the
    # server's stays in inference mode. Switching it back while a client already answered by
    # on_done generates on the same model would run that client's generation in training mode.
    was_training = model.training
    FastLanguageModel.for_inference(model)
    side, tok.padding_side = tok.padding_side, "left"  # decoder-only: pad on the left to generate
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    answers = [_Answer() for _ in texts]
    pending = list(range(len(texts)))  # in order; an answer ended before running out of memory keeps its result
    spent = 0.0
    bar = GenerationBar(progress, len(texts), batch_size, max_new_tokens)  # moves at every decoding step
    size = batch_size
    try:
        while pending:
            batch = pending[:size]
            for index in batch:
                answers[index].restart()
            writer = _Writer(tok, answers, batch, stop, on_text, on_done, cancelled, size, strip)
            if do_sample and seed is not None:
                torch.manual_seed(seed)
            try:
                _, seconds = _generate_ids(model, tok, [texts[i] for i in batch], max_new_tokens, streamer=writer,
                                           stopping_criteria=StoppingCriteriaList([writer, bar]), **sampling)
            except device_lib.out_of_memory_errors() as e:
                size = _smaller_batch(size, batch_size, max_new_tokens, e)
                pending = [i for i in pending if answers[i].result is None]
                bar.retry(size, len(pending))
                continue
            writer.finish_rest(seconds)
            pending = pending[len(batch):]
            spent += seconds
            bar.batch_done(len(texts) - len(pending), len(pending), size)
            if on_batch is not None:
                done = [a.result for a in answers if a.result is not None]
                on_batch(len(done), len(texts), sum(g.new_tokens for g in done), spent)
    finally:
        bar.close()
        tok.padding_side = side
        if was_training:
            FastLanguageModel.for_training(model)
    return [a.result for a in answers]


def chats_of(split) -> list[list[dict[str, str]]]:
    """The prompts of a split: each example's messages without its reference answer (the last
    turn), so a chat dataset's own system prompt is what the model is asked with."""
    return [list(messages[:-1]) for messages in split["messages"]]


def answers_of(loader, chats, progress: str, on_batch=None, **decoding) -> list[Generation]:
    """Load a model with `loader`, generate, and free it before returning.

    The model lives only inside this call, so the next model loads into freed memory (on a
    16 GB T4, base and tuned 3B models together would not fit beside generation).
    """
    lm = loader()
    try:
        return generate(lm, chats, progress=progress, on_batch=on_batch, **decoding)
    finally:
        del lm
        free_memory()


def check_generates(model, tokenizer, paragraph: str, max_new_tokens: int = 8) -> dict[str, Any]:
    """Greedy answer to the Easy prompt around `paragraph` from any transformers model (a reloaded
    export); an answer without a single token is a ModelError."""
    text = prompt_text(tokenizer, prompts.build_messages(paragraph))
    rows, seconds = _generate_ids(model, tokenizer, [text], max_new_tokens, do_sample=False)
    if not rows[0]:
        raise ModelError("the reloaded export generated no token at all")
    gen = _decoded(tokenizer, rows[0], seconds)
    return {"generated_tokens": gen.new_tokens, "seconds": round(seconds, 2), "sample": gen.text[:200]}


def greedy_ids(model, tokenizer, chats: Sequence[list[dict[str, str]]], max_new_tokens: int) -> list[list[int]]:
    """Each chat's greedy answer as token ids, up to and including EOS, one chat at a time (no
    padding): what export parity compares token by token."""
    out = []
    for chat in chats:
        rows, _ = _generate_ids(model, tokenizer, [prompt_text(tokenizer, chat)], max_new_tokens, do_sample=False)
        out.append(_until_eos(rows[0], tokenizer.eos_token_id))
    return out


# ---------------------------------------------------------------- loading

def _loaded(name_or_path: str, cfg):
    decisions = device_lib.decide_for(cfg)
    model, tokenizer = model_lib.from_pretrained(name_or_path, cfg, decisions)
    return model_lib.LoadedModel(model, tokenizer, {}, [], decisions)


def load_base(cfg):
    """The base model alone, as training loads it, without LoRA."""
    return _loaded(local_models.resolve(cfg.model.model_name), cfg)


def load_tuned(cfg, run):
    """Base + the run's saved adapter (adapter/), as a user would load it."""
    require_adapter(run)
    return _loaded(str(run.adapter), cfg)


def merge_to_16bit(cfg, run, out: Path) -> Path:
    """Base + the run's adapter merged into 16-bit weights in `out` (Unsloth's save_pretrained_merged).

    Unsloth's CPU backend cannot fold LoRA into Linear4bit layers (NotImplementedError), so the
    adapter of a run trained on an NF4 base is merged into the base's 16-bit original, the local
    model it was quantized from: what Unsloth's GPU path does too (it downloads the 16-bit original
    of a bnb-4bit hub base). The merged model is then not the 4-bit model that ran, by NF4's
    rounding: export's parity figures say by how much.
    """
    if cfg.model.load_in_4bit and not device_lib.describe().cuda:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"load_in_4bit": False})})
    lm = load_tuned(cfg, run)
    try:
        lm.model.save_pretrained_merged(str(out), lm.tokenizer, save_method="merged_16bit")
    finally:
        del lm
        free_memory()
    if not (out / "config.json").is_file():
        raise ModelError(f"save_pretrained_merged wrote no config.json into {out}")
    return out


def load_merged(cfg, folder: Path):
    """A merged export (base + adapter in 16-bit weights), loaded as training loads a base."""
    return _loaded(str(folder), cfg)


def with_tokenizer(lm, tokenizer):
    """`lm`'s model prompted by `tokenizer`: pass run_tokenizer(run), whose template and EOS training used."""
    return model_lib.LoadedModel(lm.model, tokenizer, {})


def _require_saved(run, filename: str, what: str) -> None:
    if not (run.adapter / filename).is_file():
        raise RunError(f"run {run.id} has no {what} in {run.adapter}: train it first "
                       "(notebooks/train.ipynb with this run_id, or `polo run`).")


def require_adapter(run) -> None:
    """A RunError naming the run and how to train it when its adapter/ holds no adapter."""
    _require_saved(run, "adapter_config.json", "adapter")


def run_tokenizer(run):
    """The tokenizer training saved with the adapter: its chat template and EOS are the truth."""
    model_lib.import_unsloth()
    from transformers import AutoTokenizer

    _require_saved(run, "tokenizer_config.json", "saved tokenizer")
    return AutoTokenizer.from_pretrained(str(run.adapter))


def reload_options(device) -> dict[str, Any]:
    """from_pretrained settings for reloading an export to check it, on `device` (a Device or its dict).

    On a GPU: 16-bit on cuda in `device.auto_dtype` (bf16 only from compute capability 8.0, fp16
    on a T4). On a CPU: float32 (bf16 matmuls measured 6-25x slower there). Never fp32 on the CPU
    when a GPU is there: Llama-3.2-3B in fp32 is ~12 GiB of RAM, more than a Colab runtime has;
    in fp16 on the GPU it is ~6.4 GB of VRAM.
    """
    import torch

    if isinstance(device, dict):
        device = device_lib.as_device(device)
    if not isinstance(device, device_lib.Device) or device.kind not in ("cuda", "cpu"):
        kind = getattr(device, "kind", device)
        raise ModelError(f"reload_options: device {kind!r} is neither 'cuda' nor 'cpu'; pass device.describe().")
    return {"dtype": getattr(torch, device_lib.auto_dtype(device)), "device_map": device.kind}


def reload_and_check(folder: Path, tokenizer, paragraph: str, label: str,
                     parity: tuple[Sequence[list[dict[str, str]]], int] | None = None, **load) -> dict[str, Any]:
    """Reload an exported folder with transformers (reload_options on this machine), answer
    `paragraph` (check_generates), and free the model before returning; `load` adds
    from_pretrained arguments (gguf_file=...). "reloaded" says how: `label` (dtype on device).
    `parity` (chats, max_new_tokens): their greedy ids come back under "answers" too."""
    from transformers import AutoModelForCausalLM

    options = reload_options(device_lib.describe())
    model = AutoModelForCausalLM.from_pretrained(str(folder), **load, **options)
    try:
        how = f"{label} ({str(options['dtype']).removeprefix('torch.')} on {options['device_map']})"
        answers = {"answers": greedy_ids(model, tokenizer, *parity)} if parity else {}
        return {"reloaded": how, **check_generates(model, tokenizer, paragraph), **answers}
    finally:
        del model
        free_memory()  # one reloaded model at a time: f16 and q8_0 of a 3B model do not fit together


def free_memory() -> None:
    """Return memory of models the caller has already dropped every reference to.

    A function cannot free its caller's model: `del` inside it drops only its own name. So
    callers `del` their references, then call this. gc.collect() because PEFT / Unsloth
    models hold reference cycles; empty_cache() so the next model's CUDA allocations can use
    the cached blocks (a 3B fp16 model is ~6.4 GB of them).
    """
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
