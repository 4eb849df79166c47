"""Generation and model loading for inference: what evaluation, training samples, export checks,
the server and the chat app share.

  placement   pick_input_device, input_device, encode_prompts: token ids go where the model
              reads them (Unsloth's fast generation does not move them)
  generation  Generation, prompt_text, generate (batched, left padding, stops at EOS), chats_of,
              answers_of, check_generates (one greedy answer from a reloaded export)
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import device as device_lib
from . import local_models, prompts
from . import model as model_lib
from .errors import ModelError, RunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # the batch's wall time shared equally by its examples
    stopped: bool = False  # ended at EOS (OpenAI finish_reason "stop"), not at max_new_tokens
    batch_size: int = 1  # the batch it was generated in (smaller than asked after running out of memory)


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
                  **sampling) -> tuple[list[list[int]], float]:
    """The new token ids of each prompt (padding and EOS included) and the seconds model.generate took."""
    import torch

    enc = encode_prompts(tokenizer, texts, model)  # on the model's device (CPU ids fail on CUDA)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
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


BROKEN = "\ufffd"  # what decoding makes of bytes that are not a whole UTF-8 character


def _smaller_batch(size: int, asked: int, max_new_tokens: int, error: BaseException) -> int:
    """Half of `size` after running out of memory at it (memory freed first); at 1, a ModelError."""
    free_memory()
    if size == 1:
        raise ModelError(f"out of memory generating even one answer at a time ({type(error).__name__}; batch size "
                         f"{asked} halved down to 1): lower max_new_tokens ({max_new_tokens}), or use a smaller "
                         "or 4-bit model.") from None
    log.warning("out of memory generating %d answers at once: trying %d", size, size // 2)
    return size // 2


def whole_text(tokenizer, ids: list[int]) -> str:
    """`ids` as text, never ending in a broken character. A byte-level tokenizer stopped at
    max_new_tokens inside a character (a Hangul syllable is 3 bytes, often split over 2 tokens)
    decodes the loose bytes at the end as U+FFFD: those are dropped, the whole characters before
    them kept."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip(BROKEN).strip()


def generate(lm, chats: Sequence[list[dict[str, str]]], max_new_tokens: int = 128, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             progress: str | None = None,
             on_batch: Callable[[int, int, int, float], None] | None = None) -> list[Generation]:
    """Answers for chats (system + user), batched with left padding, stopping at EOS.

    Greedy by default, so two runs (or base vs tuned) are compared on decoding-noise-free text.
    `on_batch(done, total, new tokens so far, seconds so far)` after each batch (a progress file).
    Out of memory in a batch: the batch size is halved, for that batch and the rest, and the batch
    tried again, down to 1 (each Generation says the batch size it got); out of memory at 1 is a
    ModelError naming what to lower.
    """
    from tqdm.auto import tqdm
    from unsloth import FastLanguageModel

    tok, model = lm.tokenizer, lm.model
    FastLanguageModel.for_inference(model)
    side, tok.padding_side = tok.padding_side, "left"  # decoder-only: pad on the left to generate
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    results: list[Generation] = []
    spent = 0.0
    bar = tqdm(total=len(chats), desc=progress or "generating", unit="example", disable=progress is None)
    size = batch_size
    try:
        while len(results) < len(chats):
            batch = chats[len(results):len(results) + size]
            try:
                rows, seconds = _generate_ids(model, tok, [prompt_text(tok, m) for m in batch], max_new_tokens,
                                              **sampling)
            except device_lib.out_of_memory_errors() as e:
                size = _smaller_batch(size, batch_size, max_new_tokens, e)
                continue
            gens = [_decoded(tok, ids, round(seconds / len(batch), 3), size) for ids in rows]
            results += gens
            spent += seconds
            bar.update(len(batch))
            bar.set_postfix(tokens_per_s=round(sum(g.new_tokens for g in gens) / seconds, 1))
            if on_batch is not None:
                on_batch(len(results), len(chats), sum(g.new_tokens for g in results), spent)
    finally:
        bar.close()
        tok.padding_side = side
        FastLanguageModel.for_training(model)
    return results


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
    return model_lib.LoadedModel(*model_lib.from_pretrained(name_or_path, cfg), {})


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
