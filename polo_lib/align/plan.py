"""The align stage's plan, before anything loads: what a step samples and trains on, and the memory it needs (the
trainer's batch of sequences, and for GRPO the generation's key/value cache), on this machine or a named one."""
from __future__ import annotations

import pandas as pd

from .. import device as device_lib
from .. import model as model_lib


def sequences_per_step(align) -> int:
    """The sequences one step trains on: GRPO's answers (paragraphs x num_generations), DPO's pairs x 2."""
    return align.per_device_train_batch_size * (align.num_generations if align.method == "grpo" else 2)


def memory(cfg, device=None, config=None) -> model_lib.MemoryEstimate:
    """The training estimate (model.estimate_memory) with the align step's sequences as the batch, and GRPO's
    generation cache: keys and values of every layer for each answer's prompt and new tokens, at the compute
    dtype, prompt and answer within max_seq_length. The frozen reference is a copy of the adapter alone (counted
    as LoRA once more)."""
    a = cfg.align
    device = device_lib.as_device(device)
    config = config or model_lib.load_config(cfg.model.model_name)
    batch = sequences_per_step(a)
    trained = cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"per_device_train_batch_size": batch, "gradient_accumulation_steps": a.gradient_accumulation_steps})})
    estimate = model_lib.estimate_memory(trained, device, config)
    parts = {**estimate.parts, "reference adapter": estimate.parts["lora"]}
    if a.method == "grpo":
        decisions = device_lib.decide(device, cfg.model, cfg.lora, cfg.training)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        parts["generation cache"] = (2 * config.num_hidden_layers * batch * cfg.model.max_seq_length * heads * head_dim
                                     * device_lib.torch_dtype(decisions.dtype).itemsize)
    return model_lib.MemoryEstimate(parts, estimate.available, estimate.device)


def table(cfg) -> pd.DataFrame:
    """What each align step does, in numbers: the method, steps, paragraphs and answers per step, the most new
    tokens generated per step, where the pairs come from, the rewards and their weights."""
    a = cfg.align
    rows = [("method", f"{a.method}, beta (KL to the SFT model) {a.kl_beta}"), ("steps", a.max_steps),
            ("sequences trained per step", f"{sequences_per_step(a)} "
             + (f"({a.per_device_train_batch_size} paragraph(s) x {a.num_generations} answers)" if a.method == "grpo"
                else f"({a.per_device_train_batch_size} pair(s) x chosen and rejected)"))]
    if a.method == "grpo":
        rows.append(("new tokens generated per step, at most",
                     a.per_device_train_batch_size * a.num_generations * a.max_new_tokens))
    else:
        rows.append(("pairs", f"{a.num_generations} sampled answers per training paragraph (up to {a.max_new_tokens} "
                              f"tokens), best against worst by at least {a.pair_margin}" if a.pairs == "self"
                     else a.pairs))
    rows += [("training paragraphs", f"the first {a.limit}" if a.limit else "all"),
             ("rewards (weights)", ", ".join(f"{k} {w:g}" for k, w in a.rewards.items())),
             ("checkpoints", f"every {a.save_steps} steps (resumed after a crash)")]
    return pd.DataFrame(rows, columns=["align", "value"]).set_index("align")
