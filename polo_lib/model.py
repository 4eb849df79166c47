"""Load the base model through Unsloth, apply LoRA, count parameters, estimate memory.

Unsloth must be imported before transformers/trl/peft (it patches them on import): every
entry point here calls `import_unsloth()` first.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import device as device_lib
from . import local_models, paths
from .errors import ModelError
from .unsloth_first import import_unsloth  # model.import_unsloth: the name notebooks and entry points use

log = logging.getLogger(__name__)

GiB = 1024 ** 3

# Architecture of the GPU recipe's model, so a CPU machine without the hub can still
# estimate its memory and trainable share (values from Llama-3.2-3B's config.json).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "unsloth/Llama-3.2-3B-Instruct-bnb-4bit": {
        "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
    },
}
KNOWN_CONFIGS["unsloth/Llama-3.2-3B-Instruct"] = KNOWN_CONFIGS["unsloth/Llama-3.2-3B-Instruct-bnb-4bit"]
KNOWN_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"] = KNOWN_CONFIGS["unsloth/Llama-3.2-3B-Instruct-bnb-4bit"]




# ------------------------------------------------------------------- config

def load_config(model_name: str):
    """The model's config without its weights: local folder, known offline config, or the hub."""
    import_unsloth()
    from transformers import AutoConfig, LlamaConfig

    if model_name in KNOWN_CONFIGS and not os.path.isdir(model_name):
        # No hub round trip (and no minutes of retries offline): the architecture is recorded.
        return LlamaConfig(**{k: v for k, v in KNOWN_CONFIGS[model_name].items() if k != "model_type"})
    where = local_models.resolve(model_name)
    local_models.check_reachable(where)
    try:
        return AutoConfig.from_pretrained(where)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, a hub error: each means "cannot read"
        raise ModelError(f"model_name '{model_name}': cannot read its config ({type(e).__name__}: {e}). "
                         "Check the name, the path, or your network for a hub id.") from None


def _meta_model(config):
    """The architecture on the meta device: exact shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def lora_shapes(config, target_modules) -> tuple[int, dict[str, int], dict[str, int]]:
    """(total params, params per target module type, LoRA params per type for r=1)."""
    meta = _meta_model(config)
    total = sum(p.numel() for p in meta.parameters())
    per_type: dict[str, int] = {t: 0 for t in target_modules}
    lora_r1: dict[str, int] = {t: 0 for t in target_modules}
    for name, module in meta.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in per_type and hasattr(module, "in_features"):
            per_type[leaf] += module.weight.numel()
            lora_r1[leaf] += module.in_features + module.out_features
    missing = [t for t, n in per_type.items() if n == 0]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n, m in meta.named_modules() if hasattr(m, "in_features")})
        raise ModelError(f"lora.target_modules {missing} not found in the model; its linear layers are: "
                         f"{', '.join(available)}. Fix lora.target_modules.")
    return total, per_type, lora_r1


# ------------------------------------------------------------------- memory

@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed for training, by part, against what the device has free."""
    parts: dict[str, int]
    available: int
    device: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= 0.9 * self.available  # 10% headroom for the allocator and CUDA context

    def needed_free(self) -> str:
        """'needed / free GiB on device', a row of the ready tables."""
        return f"{self.total / GiB:.2f} / {self.available / GiB:.2f} GiB on {self.device}"

    def table(self) -> pd.DataFrame:
        rows = [{"part": k, "GiB": round(v / GiB, 3)} for k, v in self.parts.items()]
        rows += [{"part": "total", "GiB": round(self.total / GiB, 3)},
                 {"part": f"free on {self.device}", "GiB": round(self.available / GiB, 3)}]
        return pd.DataFrame(rows).set_index("part")


def estimate_memory(cfg, device=None, config=None) -> MemoryEstimate:
    """Weights at the applied precision + LoRA + grads + optimizer states + activations + logits.

    A rough upper bound (Korthikanti et al. 2022 for activations), good enough to refuse a
    setting that clearly cannot fit before minutes are spent loading. Precision, 4-bit, optimizer
    and checkpointing are the ones `device.decide` will apply on this device.
    """
    device = device_lib.as_device(device)
    decisions = device_lib.decide(device, cfg.model, cfg.lora, cfg.training)
    config = config or load_config(cfg.model.model_name)
    total, per_type, lora_r1 = lora_shapes(config, cfg.lora.target_modules)
    on_gpu = device.cuda
    dtype_bytes = device_lib.torch_dtype(decisions.dtype).itemsize
    hidden, layers = config.hidden_size, config.num_hidden_layers
    vocab = config.vocab_size
    embed = vocab * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    linear = total - embed
    # NF4: 4 bits a linear weight (+ ~3% for its absmax scales, left out); embeddings and the head stay
    # in the compute dtype (2 bytes on a GPU, 4 in a CPU's float32)
    weights = int(linear * 0.5 + embed * dtype_bytes) if decisions.load_in_4bit else total * dtype_bytes
    lora = sum(lora_r1.values()) * cfg.lora.r
    optimizer_bytes = 2 if "8bit" in decisions.optim else 8  # two Adam moments
    batch, seq = cfg.training.per_device_train_batch_size, cfg.model.max_seq_length
    checkpointing = bool(decisions.gradient_checkpointing)
    act_bytes = 2 if on_gpu else dtype_bytes
    if checkpointing:  # one hidden state per layer kept, one layer recomputed at a time
        activations = batch * seq * hidden * act_bytes * layers + batch * seq * hidden * 17 * act_bytes
    else:  # 34·sbh bytes per layer at 16-bit (Korthikanti; SDPA keeps no s×s scores), scaled to the dtype
        activations = int(batch * seq * hidden * 34 * layers * act_bytes / 2)
    logits = batch * seq * vocab * 4 * 2  # fp32 logits and their gradient
    parts = {"weights": int(weights), "lora": lora * 4, "gradients": lora * 4,
             "optimizer": lora * optimizer_bytes, "activations": int(activations), "logits": logits}
    return MemoryEstimate(parts, int(device.memory_free), device.kind)


def check_memory(estimate: MemoryEstimate, enabled: bool = True) -> MemoryEstimate:
    """Refuse a setting that clearly will not fit, saying what to lower."""
    if enabled and not estimate.fits:
        raise ModelError(
            f"training needs about {estimate.total / GiB:.1f} GiB but {estimate.device} has "
            f"{estimate.available / GiB:.1f} GiB free "
            f"({', '.join(f'{k} {v / GiB:.1f}' for k, v in estimate.parts.items())} GiB). "
            "Lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
            "effective batch), lower model.max_seq_length, set model.load_in_4bit: true, or "
            "set model.memory_check: false to try anyway.")
    return estimate


# ------------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    """The LoRA-wrapped model, its tokenizer, and what was asked vs what was applied; `decisions`: what
    `device.decide` said for this load, checked against the loaded model, for the trainer to use."""
    model: Any
    tokenizer: Any
    applied: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    decisions: device_lib.Decisions | None = None

    def applied_table(self) -> pd.DataFrame:
        rows = [{"setting": k, "asked": v["asked"], "applied": v["applied"]}
                for k, v in self.applied.items() if isinstance(v, dict) and "asked" in v]
        return pd.DataFrame(rows, columns=["setting", "asked", "applied"]).set_index("setting")

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{n}</li>" for n in self.notes)
        return self.applied_table()._repr_html_() + (f"<ul>{notes}</ul>" if notes else "")

    def __repr__(self) -> str:
        return f"{self.applied_table()}\n" + "\n".join(self.notes)


def load_tokenizer(model_params):
    """The model's own tokenizer (and chat template), without loading the weights."""
    import_unsloth()
    from transformers import AutoTokenizer

    where = local_models.resolve(model_params.model_name)
    local_models.check_reachable(where)
    try:
        return AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise ModelError(f"model_name '{model_params.model_name}': cannot load its tokenizer ({e}). "
                         "A hub id needs the internet; offline, use params_file 'cpu' "
                         "(smollm2-135m-instruct) or a local path.") from None


def from_pretrained(name_or_path: str, cfg, decisions: device_lib.Decisions | None = None):
    """FastLanguageModel.from_pretrained with the params' length and the decided dtype and 4-bit
    (`decisions`: the caller's, else decided here for this machine), then checked against them
    (`check_applied`).

    One place for training, evaluation (base, and base + a saved adapter folder), serving and
    benchmarks, so every path loads the model the same way.
    """
    import_unsloth()
    from unsloth import FastLanguageModel

    decisions = decisions or device_lib.decide_for(cfg)
    local_models.check_reachable(name_or_path)  # offline: one clear error now, not a minute of hub retries
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=name_or_path, max_seq_length=cfg.model.max_seq_length,
            dtype=device_lib.torch_dtype(decisions.dtype), load_in_4bit=decisions.load_in_4bit)
    except (OSError, ValueError) as e:
        raise ModelError(f"model_name '{cfg.model.model_name}': could not load {name_or_path} "
                         f"({type(e).__name__}: {e}).") from None
    check_applied(model, decisions, name_or_path)
    return model, tokenizer


def load(cfg, device=None) -> LoadedModel:
    """Base model through FastLanguageModel.from_pretrained, then LoRA via get_peft_model.

    Precision, 4-bit and checkpointing come from `device.decide`: a GPU recipe on a CPU is refused
    before anything loads; where bitsandbytes' NF4 does not run, 4-bit falls back to full precision,
    recorded (asked vs applied) and shown, never silent. The loaded model is then checked against
    the decision (`check_applied`): 4-bit decided but not loaded is an error, not a quiet 16-bit run.
    """
    import torch

    device = device_lib.as_device(device)  # described once for this load
    decisions = device_lib.decide(device, cfg.model, cfg.lora, cfg.training)  # refusals before loading
    notes = list(decisions.notes)
    where = local_models.resolve(cfg.model.model_name)
    model, tokenizer = from_pretrained(where, cfg, decisions)
    from unsloth import FastLanguageModel

    four_bit_layers = count_4bit_layers(model)
    lora_shapes(model.config, cfg.lora.target_modules)  # a clear error for a missing target module
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=cfg.lora.lora_dropout,
        target_modules=list(cfg.lora.target_modules), bias=cfg.lora.bias,
        use_gradient_checkpointing=decisions.gradient_checkpointing, random_state=cfg.training.seed,
        use_rslora=cfg.lora.use_rslora, max_seq_length=cfg.model.max_seq_length)
    if cfg.run.init_adapter:
        notes.append(f"LoRA weights start from {load_init_adapter(model, cfg.run.init_adapter)}")
    model_dtype = next(p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point())
    applied = {
        "load_in_4bit": {"asked": cfg.model.load_in_4bit, "applied": four_bit_layers > 0},
        "linear4bit_layers": four_bit_layers,  # counted in the loaded model, not assumed
        "dtype": {"asked": cfg.model.dtype, "applied": str(model_dtype).removeprefix("torch.")},
        "device": {"asked": "auto", "applied": f"{device.kind} ({device.name})"},
        "gradient_checkpointing": {"asked": cfg.lora.use_gradient_checkpointing,
                                   "applied": str(decisions.gradient_checkpointing)},
        "model_path": where,
    }
    for n in notes:
        log.warning(n)
    torch.manual_seed(cfg.training.seed)
    return LoadedModel(model, tokenizer, applied, notes, decisions)


def count_4bit_layers(model) -> int:
    """bitsandbytes' Linear4bit modules in `model`: its quantized linear layers. PEFT's LoRA wrapper
    of such a layer is also a class named Linear4bit (peft.tuners.lora.bnb): not counted twice."""
    return sum(type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
               for m in model.modules())


def check_applied(model, decisions, where: str) -> int:
    """The loaded model against what `device.decide` said it would be: 4-bit decided means NF4
    Linear4bit layers, 16-bit decided means none, and the embedding weights are in the decided dtype.
    Unsloth's CPU loader falls back to 16-bit on its own (bitsandbytes refuses layers narrower than
    64): that must stop the run, not change its precision behind the manifest's back. Returns the
    number of 4-bit layers."""
    n = count_4bit_layers(model)
    embedding = model.get_input_embeddings().weight.dtype
    if str(embedding).removeprefix("torch.") != decisions.dtype:
        raise ModelError(f"{where}: loaded in {str(embedding).removeprefix('torch.')} where {decisions.dtype} was "
                         "decided for this machine (the embedding weights); set model.dtype explicitly.")
    if decisions.load_in_4bit and n == 0:
        raise ModelError(f"{where}: 4-bit NF4 was decided for this machine but the loaded model holds no "
                         "bitsandbytes Linear4bit layer (Unsloth fell back to 16-bit weights; its log above says "
                         "why). Set model.load_in_4bit: false to train in 16-bit on purpose.")
    if not decisions.load_in_4bit and n:
        raise ModelError(f"{where}: {n} Linear4bit layers loaded where {decisions.dtype} weights were decided: "
                         "a pre-quantized (bnb-4bit) checkpoint needs model.load_in_4bit: true.")
    return n


def init_adapter_path(init_adapter: str):
    """A run id (its adapter/) or a folder holding adapter_model.safetensors."""
    from pathlib import Path

    candidates = [paths.runs_dir() / init_adapter / "adapter", Path(init_adapter).expanduser(),
                  paths.resolve_project_path(init_adapter)]
    for c in candidates:
        if (c / "adapter_model.safetensors").is_file():
            return c
    raise ModelError(f"run.init_adapter '{init_adapter}': neither a run id with an adapter in "
                     f"{paths.runs_dir()} nor a folder with adapter_model.safetensors. Train that run first.")


def load_init_adapter(peft_model, init_adapter: str):
    """Copy a previous run's LoRA weights into a freshly wrapped model (chained stages).

    The LoRA shapes must match (same r and target modules); a mismatch is an error, not a
    partial load.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    where = init_adapter_path(init_adapter)
    weights = load_file(str(where / "adapter_model.safetensors"))
    own = {k for k in peft_model.state_dict() if "lora_" in k}
    try:
        result = set_peft_model_state_dict(peft_model, weights)
    except RuntimeError as e:  # shape mismatch: another r or model
        raise ModelError(f"run.init_adapter '{init_adapter}' does not fit this model's LoRA "
                         f"(same lora.r and target_modules needed): {str(e).splitlines()[0]}") from None
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or not own:
        raise ModelError(f"run.init_adapter '{init_adapter}': {len(missing)} LoRA weights of this model are "
                         f"not in {where} (e.g. {missing[:2]}); use the same lora.target_modules.")
    return where


# ---------------------------------------------------------------- parameters

def logical_numel(name: str, p) -> int:
    """How many weights a parameter stands for, which is not numel() for a 4-bit weight.

    bitsandbytes' Params4bit stores two 4-bit values per byte of its quant_storage (uint8 by
    default: numel() is half the count; a 16-bit storage packs four) and keeps the original
    shape in `quant_state.shape` (bitsandbytes 0.50 functional.quantize_4bit). Not yet quantized
    (quant_state None, e.g. before `.cuda()`), the tensor holds the weights as they are.
    """
    quant_state = getattr(p, "quant_state", None)
    if quant_state is None:
        return p.numel()
    shape = getattr(quant_state, "shape", None)
    if shape is None:
        raise ModelError(f"parameter {name}: it has a quant_state without a shape, so its weight count is "
                         "unknown; parameter_table knows bitsandbytes' Params4bit (quant_state.shape) only.")
    n = math.prod(int(d) for d in shape)
    if n < p.numel():
        raise ModelError(f"parameter {name}: quant_state.shape {tuple(shape)} holds {n} weights but the stored "
                         f"tensor has {p.numel()} elements; a packed weight never stores more than it stands for.")
    return n


def parameter_table(model) -> pd.DataFrame:
    """Total and trainable parameters, per LoRA target module type, with their bytes.

    Parameters are counted as weights of the architecture (a 4-bit weight by its quant_state
    shape, see logical_numel), so the 3B recipe reports ~3.22B whether loaded in 4 or 16 bits;
    bytes are as stored (a packed 4-bit weight: half a byte each, without its absmax scales).
    """
    total = trainable = total_bytes = trainable_bytes = 0
    per_type: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        n, b = logical_numel(name, p), p.numel() * p.element_size()
        total, total_bytes = total + n, total_bytes + b
        if p.requires_grad:
            trainable, trainable_bytes = trainable + n, trainable_bytes + b
            parts = name.split(".")
            module = next((parts[i - 1] for i, s in enumerate(parts) if s.startswith("lora_")), "other")
            entry = per_type.setdefault(f"LoRA on {module}", [0, 0])
            entry[0] += n
            entry[1] += b
    rows = [{"group": "total", "parameters": total, "bytes": total_bytes},
            {"group": "trainable", "parameters": trainable, "bytes": trainable_bytes}]
    rows += [{"group": k, "parameters": v[0], "bytes": v[1]} for k, v in sorted(per_type.items())]
    df = pd.DataFrame(rows).set_index("group")
    df["share_%"] = (100 * df["parameters"] / total).round(4)
    df["MiB"] = (df["bytes"] / 2 ** 20).round(2)
    return df


def recipe_parameter_table(cfg, config=None) -> pd.DataFrame:
    """Trainable share for a params recipe from the architecture alone (no weights, no GPU)."""
    config = config or load_config(cfg.model.model_name)
    total, per_type, lora_r1 = lora_shapes(config, cfg.lora.target_modules)
    lora = {t: n * cfg.lora.r for t, n in lora_r1.items()}
    rows = [{"group": "total (base + LoRA)", "parameters": total + sum(lora.values())},
            {"group": "trainable", "parameters": sum(lora.values())}]
    rows += [{"group": f"LoRA on {t}", "parameters": n} for t, n in lora.items()]
    df = pd.DataFrame(rows).set_index("group")
    df["share_%"] = (100 * df["parameters"] / (total + sum(lora.values()))).round(4)
    return df
