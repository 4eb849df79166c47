"""Loading for inference: a base, a run's tuned model (base + adapter/), a merged export, the run's
own tokenizer, and freeing a model's memory once the caller has dropped it."""
from __future__ import annotations

import gc
from pathlib import Path

from .. import device as device_lib
from .. import local_models
from .. import model as model_lib
from ..errors import ModelError, RunError


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


def is_aligned(run) -> bool:
    """The run's model is the align stage's adapter (the SFT one kept beside it)."""
    return run.adapter != run.sft_adapter


def load_sft(cfg, run):
    """Base + the run's SFT adapter (adapter/): the model an aligned run started from."""
    return _loaded(str(run.sft_adapter), cfg)


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
