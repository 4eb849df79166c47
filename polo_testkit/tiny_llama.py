"""The tiny test model, tiny-llama: a byte-level BPE tokenizer trained on the project's texts, a
~0.3M-parameter LlamaForCausalLM and a few seconds of pre-training, built once per model cache.

`polo_lib.local_models.resolve("tiny-llama")` calls `build` (named there by "module:function") the
first time; tests call `build_tiny_llama` with texts of their own.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from polo_lib import paths
from polo_lib.errors import ModelError
from polo_lib.local_models import TINY_LLAMA, atomic_build
from polo_lib.unsloth_first import import_unsloth

log = logging.getLogger(__name__)

# Tiny model: special tokens and a plain system/user/assistant chat format. The role
# markers are single tokens so that response-only masking finds them reliably.
TINY_BOS, TINY_EOS, TINY_PAD = "<|begin|>", "<|end|>", "<|pad|>"
TINY_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tiny-llama chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# ~0.34M parameters in total: 2 x (2000 x 64) for embeddings + untied head, ~40k per layer.
TINY_VOCAB_SIZE = 2000
TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,  # head_dim 16
    num_key_value_heads=2,  # grouped-query attention, as in SmolLM2 (9 q / 3 kv heads)
    max_position_embeddings=2048,  # tokens; long enough for a paragraph pair + prompt
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
)

# Prompt-like sentences added to the raw texts so that the tiny tokenizer has merges for
# the instruction wording as well as the paper text (English and Korean).
TINY_EXTRA_TEXTS: tuple[str, ...] = (
    "You are a helpful assistant that explains technical papers in easy Korean.",
    "Rewrite the following paragraph so that a high school student can understand it.",
    "Explain the paragraph below in simple words.",
    "Paragraph:",
    "Easy explanation:",
    "당신은 어려운 기술 논문을 쉬운 한국어로 설명하는 도우미입니다.",
    "다음 문단을 고등학생도 이해할 수 있도록 쉬운 한국어로 바꿔 주세요.",
    "아래 문단을 쉬운 말로 설명해 주세요.",
    "YOLO는 이미지를 한 번만 보고 물체의 위치와 종류를 한꺼번에 찾습니다.",
    "쉬운 설명:",
)


def build(out_dir: Path) -> Path:
    """local_models' builder for tiny-llama: the model the tests and the `smoke` params train, built
    at `out_dir` from the raw paper texts with the full pre-training."""
    return build_tiny_llama(out_dir, tiny_llama_texts())


def tiny_llama_texts() -> list[str]:
    """The texts the tiny tokenizer is trained on: the raw paper pairs plus prompt wording.

    Read with json directly (no polo_lib.data) so that building the test model does not
    depend on the data module's validation rules.
    """
    raw = paths.RAW_DIR / "yolo_v1.json"
    if not raw.is_file():
        raise ModelError(
            f"tiny-llama trains its tokenizer on {raw}, which does not exist. "
            "Restore data/raw/yolo_v1.json (it is part of the repository)."
        )
    try:
        data = json.loads(raw.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"tiny-llama: cannot read {raw}: {exc}") from exc
    texts = list(_strings_under_keys(data, ("original", "simplified")))
    if not texts:
        raise ModelError(f"tiny-llama: {raw} holds no 'original' or 'simplified' strings to train a tokenizer on.")
    return texts + list(TINY_EXTRA_TEXTS)


def _strings_under_keys(node: Any, keys: tuple[str, ...]) -> Iterable[str]:
    # Walk any nesting (list of records, sections of records, ...) in document order.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str) and value.strip():
                yield value
            else:
                yield from _strings_under_keys(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings_under_keys(item, keys)


# A few seconds of full-parameter language modelling on the dataset's texts: a purely random
# model cannot be steered by LoRA alone (its frozen random head keeps logits near uniform),
# so tests could not show that fine-tuning changes what it writes.
PRETRAIN_STEPS = 300
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3


def _pretrain(model, tokenizer, texts: Sequence[str], seed: int, steps: int) -> dict[str, float]:
    """Causal-LM training on `texts`, deterministic for a seed; returns first/last loss."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:126] for t in texts]
    encoded = [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in encoded if ids]
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    model.train()
    first = last = float("nan")
    # once per model cache, about 2 s on an idle machine and over 100 s on a busy 2-core one: a bar
    bar = tqdm(range(steps), desc=f"building {TINY_LLAMA} (once per model cache): pretraining", unit="step")
    for step in bar:
        idx = torch.randint(len(encoded), (PRETRAIN_BATCH,), generator=gen).tolist()
        batch = [encoded[i] for i in idx]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, b in enumerate(batch):
            ids[row, :len(b)] = torch.tensor(b)
            labels[row, :len(b)] = torch.tensor(b)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        first = loss.item() if step == 0 else first
        last = loss.item()
        bar.set_postfix_str(f"loss {last:.3f}", refresh=False)
    bar.close()
    model.eval()
    return {"first": round(first, 3), "last": round(last, 3), "steps": steps}


def build_tiny_llama(out_dir: Path, texts: Sequence[str], seed: int = 0,
                     pretrain_steps: int = PRETRAIN_STEPS) -> Path:
    """Build a tiny Llama + byte-level BPE tokenizer at `out_dir` in a few seconds.

    Random weights, then a few seconds of language modelling on `texts` (see _pretrain);
    `pretrain_steps` shortens that for tests of the build itself (the marker records it).

    It is a real LlamaForCausalLM (the architecture Unsloth patches), so tests exercise the
    same loading, LoRA, masking and generation code as SmolLM2 and the GPU models. The
    tokenizer is byte-level, so any text, Hangul included, encodes and decodes losslessly.
    The same texts and seed give identical files.
    """
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ModelError("build_tiny_llama: no texts to train the tokenizer on.")
    out_dir = Path(out_dir)
    log.info("building tiny-llama into %s (a few seconds; minutes on a busy 2-core machine)", out_dir)

    def write(tmp: Path) -> dict[str, Any]:
        import torch
        import_unsloth()  # before transformers: this process may load a model with Unsloth next
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        tokenizer = _train_tiny_tokenizer(texts)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_CONFIG,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        pretrain_loss = _pretrain(model, tokenizer, texts, seed, pretrain_steps)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return {
            "model": TINY_LLAMA,
            "seed": seed,
            "texts": len(texts),
            "texts_sha256": hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "pretrain_loss": pretrain_loss,
            "vocab_size": len(tokenizer),
        }

    return atomic_build(out_dir, write)


def _train_tiny_tokenizer(texts: Sequence[str]):
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [TINY_PAD, TINY_BOS, TINY_EOS, *TINY_ROLES]  # ids 0..5
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        # All 256 byte symbols, so unseen characters still encode (no unknown token).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=TINY_BOS,
        eos_token=TINY_EOS,
        pad_token=TINY_PAD,
        extra_special_tokens=list(TINY_ROLES),
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer
