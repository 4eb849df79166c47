"""Base vs tuned on held-out paragraphs: batched generation, metrics, side-by-side examples.

Both models see the same prompts (the Easy prompt from polo_lib.prompts, the tokenizer's
chat template) and the same decoding settings (params `evaluation`). The base model is
loaded alone and freed, then the run's adapter on top of a fresh base: no adapter toggling that a
patched fast path might ignore.
"""
from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from . import model as model_lib
from . import plots, prompts
from .atomic import atomic_write_json, atomic_write_text
from .errors import ModelError, RunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # the batch's wall time shared equally by its examples
    stopped: bool = False  # ended at EOS (OpenAI finish_reason "stop"), not at max_new_tokens


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


def generate(lm, chats: Sequence[list[dict[str, str]]], max_new_tokens: int = 128, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             progress: str | None = None) -> list[Generation]:
    """Answers for chats (system + user), batched with left padding, stopping at EOS.

    Greedy by default, so two runs (or base vs tuned) are compared on decoding-noise-free text.
    """
    import torch
    from tqdm.auto import tqdm
    from unsloth import FastLanguageModel

    tok, model = lm.tokenizer, lm.model
    FastLanguageModel.for_inference(model)
    side, tok.padding_side = tok.padding_side, "left"  # decoder-only: pad on the left to generate
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    results: list[Generation] = []
    bar = tqdm(total=len(chats), desc=progress or "generating", unit="example", disable=progress is None)
    try:
        for i in range(0, len(chats), batch_size):
            batch = chats[i:i + batch_size]
            texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
            enc = encode_prompts(tok, texts, model)
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id, **sampling)
            seconds = time.perf_counter() - start
            new = out[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = row.tolist()
                n = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
                text = tok.decode(ids[:n], skip_special_tokens=True).strip()
                results.append(Generation(text, n, round(seconds / len(batch), 3), tok.eos_token_id in ids[:n]))
            bar.update(len(batch))
            bar.set_postfix(tokens_per_s=round(sum(r.new_tokens for r in results[-len(batch):]) / seconds, 1))
    finally:
        bar.close()
        tok.padding_side = side
        FastLanguageModel.for_training(model)
    return results


def chats_of(split) -> list[list[dict[str, str]]]:
    """The prompts of a split: each example's messages without its reference answer."""
    return [prompts.build_messages(o) for o in split["original"]]


def select(dataset, split: str, limit: int | None):
    if split not in dataset:
        raise RunError(f"split '{split}' not in the processed data ({', '.join(dataset)}).")
    ds = dataset[split]
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def load_base(cfg):
    """The base model alone, as training loads it, without LoRA."""
    where = model_lib.local_models.resolve(cfg.model.model_name)
    return model_lib.LoadedModel(*model_lib.from_pretrained(where, cfg), {})


def load_tuned(cfg, run):
    """Base + the run's saved adapter (adapter/), as a user would load it."""
    if not (run.adapter / "adapter_config.json").is_file():
        raise RunError(f"run {run.id} has no adapter in {run.adapter}: train it first "
                       "(notebooks/train.ipynb with this run_id, or `polo run`).")
    return model_lib.LoadedModel(*model_lib.from_pretrained(str(run.adapter), cfg), {})


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


def answers_of(loader, chats, progress: str, **decoding) -> list[Generation]:
    """Load a model with `loader`, generate, and free it before returning.

    The model lives only inside this call, so the next model loads into freed memory (on a
    16 GB T4, base and tuned 3B models together would not fit beside generation).
    """
    lm = loader()
    try:
        return generate(lm, chats, progress=progress, **decoding)
    finally:
        del lm
        free_memory()


def predict(run, cfg, dataset) -> pd.DataFrame:
    """Generate base and tuned answers for the evaluation split; writes eval/predictions.jsonl."""
    e = cfg.evaluation
    split = select(dataset, e.split, e.limit)
    chats = chats_of(split)
    decoding = dict(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, do_sample=e.do_sample,
                    temperature=e.temperature, top_p=e.top_p)
    outputs = {}
    for name, loader in (("base", lambda: load_base(cfg)), ("tuned", lambda: load_tuned(cfg, run))):
        outputs[name] = answers_of(loader, chats, progress=f"{name} model", **decoding)
    rows = []
    for i, pid in enumerate(split["id"]):
        row = {"id": pid, "original": split["original"][i], "reference": split["simplified"][i]}
        for name, gens in outputs.items():
            row.update({name: gens[i].text, f"{name}_new_tokens": gens[i].new_tokens,
                        f"{name}_seconds": gens[i].seconds})
        rows.append(row)
    atomic_write_text(run.eval / "predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return pd.DataFrame(rows).set_index("id")


def speed_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """New tokens, seconds and tokens/s per model over the split."""
    rows = []
    for name in ("base", "tuned"):
        tokens, seconds = predictions[f"{name}_new_tokens"].sum(), predictions[f"{name}_seconds"].sum()
        rows.append({"model": name, "examples": len(predictions), "new_tokens": int(tokens),
                     "seconds": round(float(seconds), 1), "tokens_per_s": round(tokens / seconds, 1) if seconds else None})
    return pd.DataFrame(rows).set_index("model")


def score(predictions: pd.DataFrame, cfg, run=None) -> pd.DataFrame:
    """Every metric for base and tuned, with the delta and whether tuned is better.

    With a run: writes eval/metrics.json and the evaluation section of summary.json.
    """
    from . import metrics

    glossary = metrics.load_glossary()
    sources, references = list(predictions["original"]), list(predictions["reference"])
    scores = {name: metrics.score_all(sources, list(predictions[name]), references,
                                      cfg.data.filler_phrases, glossary) for name in ("base", "tuned")}
    table = pd.DataFrame(scores)
    table["delta"] = table["tuned"] - table["base"]
    table["tuned_better"] = [
        None if metrics.HIGHER_IS_BETTER.get(k) is None or pd.isna(d) else (d > 0) == metrics.HIGHER_IS_BETTER[k]
        for k, d in table["delta"].items()]
    if run is not None:
        speed = speed_table(predictions)
        body = {"split": cfg.evaluation.split, "examples": len(predictions),
                "decoding": cfg.evaluation.model_dump(), "metrics": _clean(table.to_dict(orient="index")),
                "speed": _clean(speed.to_dict(orient="index"))}
        atomic_write_json(run.eval / "metrics.json", body)
        run.update_summary(evaluation={"split": body["split"], "examples": body["examples"],
                                       "base": _clean(scores["base"]), "tuned": _clean(scores["tuned"])})
    return table


def _clean(obj: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, for JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def chart(table: pd.DataFrame, run=None, title: str = "base vs tuned"):
    fig = plots.metrics_chart(table[["base", "tuned"]], title=title)
    if run is not None:
        plots.save(fig, run.plots / "metrics.png")
    return fig


def examples(predictions: pd.DataFrame, run=None, n: int = 5) -> pd.DataFrame:
    """n examples side by side (original, reference, base, tuned); eval/examples.md with a run."""
    table = predictions[["original", "reference", "base", "tuned"]].head(n)
    if run is not None:
        parts = [f"# Examples: run {run.id}\n"]
        for pid, row in table.iterrows():
            parts.append(f"## Paragraph {pid}\n")
            for col in ("original", "reference", "base", "tuned"):
                parts.append(f"**{col}**\n\n{row[col] or '(empty)'}\n")
        atomic_write_text(run.eval / "examples.md", "\n".join(parts))
    return table
