"""Generation: prompts encoded on the model's input device, answers generated in left-padded batches
that stop at EOS, halved on running out of memory, streamed, with a progress bar."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .. import device as device_lib
from ..errors import ModelError
from ..progress import GenerationBar
from .decoding import Generation, _Answer, _Writer, whole_text
from .loading import free_memory

log = logging.getLogger(__name__)


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
