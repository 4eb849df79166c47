"""Parameter counts stay the architecture's when the base is loaded in 4 bits.

bitsandbytes is GPU-only and not installed here, so its packed weight is stood in for by what
parameter_table can see of it, the same facts as bitsandbytes 0.50's Params4bit after
`quantize_4bit`: a torch Parameter of uint8 with (n + 1) // 2 elements, shaped ((n + 1) // 2, 1),
and a `quant_state` whose `.shape` is the original weight's shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from polo_lib import model, params
from polo_lib.errors import ModelError

# The issue's figures for Llama-3.2-3B-Instruct with LoRA r16 on q/k/v/o (params/default.yaml).
LLAMA_3B_BASE = 3_212_749_824
LLAMA_3B_LORA_R16_QKVO = 9_175_040


@dataclass
class QuantStateShape:
    """The one QuantState fact parameter_table reads: the unpacked weight's shape."""
    shape: torch.Size


def packed_like_bnb(weight: torch.Tensor) -> torch.nn.Parameter:
    """A 16/32-bit weight as bitsandbytes stores it in 4 bits: two values per uint8, shape aside."""
    n = weight.numel()
    p = torch.nn.Parameter(torch.zeros(((n + 1) // 2, 1), dtype=torch.uint8, device=weight.device),
                           requires_grad=False)
    p.quant_state = QuantStateShape(weight.shape)
    return p


def pack_linear_weights(m: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every frozen Linear weight (not LoRA's, not lm_head: bitsandbytes skips it) as
    `load_in_4bit` does; returns how many weights were packed."""
    packed = 0
    for name, module in m.named_modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith(skip)
                and weight is not None and not weight.requires_grad):
            module.weight = packed_like_bnb(weight)
            packed += weight.numel()
    return packed


def test_4bit_tiny_model_counts_as_its_architecture(tiny_model_dir):
    """The real tiny model with LoRA, its frozen linear weights packed as bitsandbytes packs
    them: totals equal the architecture's (recipe_parameter_table), bytes are as stored."""
    cfg = params.load("smoke")
    lm = model.load(cfg)
    before = model.parameter_table(lm.model)
    packed = pack_linear_weights(lm.model)
    assert packed > 0
    after = model.parameter_table(lm.model)
    recipe = model.recipe_parameter_table(cfg)

    assert after.loc["total", "parameters"] == before.loc["total", "parameters"] \
        == recipe.loc["total (base + LoRA)", "parameters"]
    assert after.loc["trainable", "parameters"] == recipe.loc["trainable", "parameters"]
    assert after.loc["trainable", "share_%"] == before.loc["trainable", "share_%"]
    # numel() would have counted half of every packed weight
    assert sum(p.numel() for p in lm.model.parameters()) == after.loc["total", "parameters"] - packed // 2
    # stored bytes: each packed float32 weight (4 bytes) now takes half a byte
    assert before.loc["total", "bytes"] - after.loc["total", "bytes"] == packed * 4 - packed // 2


def test_4bit_llama_3b_counts_the_issues_figures():
    """Llama-3.2-3B's architecture on the meta device, packed as the bnb-4bit checkpoint is:
    3,212,749,824 base weights, not the 1.80B numel() says; with the recipe's LoRA, 3,221,924,864."""
    cfg = params.load("default")
    config = model.load_config(cfg.model.model_name)
    meta = model._meta_model(config).requires_grad_(False)  # a loaded base is frozen
    pack_linear_weights(meta)
    table = model.parameter_table(meta)
    assert table.loc["total", "parameters"] == LLAMA_3B_BASE
    assert sum(p.numel() for p in meta.parameters()) == 1_803_463_680  # what the old count reported
    recipe = model.recipe_parameter_table(cfg)
    assert recipe.loc["total (base + LoRA)", "parameters"] == LLAMA_3B_BASE + LLAMA_3B_LORA_R16_QKVO
    assert recipe.loc["trainable", "parameters"] == LLAMA_3B_LORA_R16_QKVO
    # what summary.json's trainable_% will say for the 4-bit model: ~0.28 %, not 0.51 %
    assert round(100 * LLAMA_3B_LORA_R16_QKVO / (table.loc["total", "parameters"] + LLAMA_3B_LORA_R16_QKVO), 2) == 0.28


def test_a_quant_state_without_shape_or_with_too_few_weights_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.uint8), requires_grad=False)
    p.quant_state = object()
    with pytest.raises(ModelError, match="w.weight: it has a quant_state without a shape"):
        model.logical_numel("w.weight", p)
    p.quant_state = QuantStateShape(torch.Size([2, 2]))
    with pytest.raises(ModelError, match=r"holds 4 weights but the stored tensor has 8"):
        model.logical_numel("w.weight", p)
    p.quant_state = None  # not quantized yet: the tensor is the weights
    assert model.logical_numel("w.weight", p) == 8
