"""An export reloaded and answering: one greedy answer to the Easy prompt, and the greedy token ids
that export parity compares, from any transformers model."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import device as device_lib
from .. import prompts
from ..errors import ModelError
from .generation import _decoded, _generate_ids, _until_eos, prompt_text
from .loading import free_memory


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
