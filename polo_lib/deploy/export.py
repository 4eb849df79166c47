"""Take a trained run elsewhere: its LoRA adapter, a merged 16-bit model, or GGUF files.

Everything goes into the run folder's export/<format>/, built in a temporary sibling and
swapped in whole (a failed export leaves nothing half-written), each with a model card
(README.md) and checked by reloading what was written and generating from it.

The chat template and EOS come from the run's saved tokenizer (adapter/), the object
training used; merged and GGUF exports carry that same template, and the check compares
them, so a model served elsewhere (vLLM, Ollama, llama.cpp) sees the prompts it was trained on.

GGUF files come from llama.cpp's converter (gguf); the parity of each export with the model it came
from is in parity (every name still importable from here).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import inference, local_models, prompts, registry
from ..atomic import atomic_replace_dir
from ..errors import ModelError, PoloError, RunError
from ..notebook import say
from ..registry import EXPORT_FORMATS
from .gguf import (  # noqa: F401
    CONVERTER_MEMBERS,
    CONVERTER_PACKAGE,
    CONVERTER_VERSION,
    DEFAULT_GGUF_TYPES,
    GGUF_ROUNDING,
    GGUF_SAME_ARITHMETIC,
    GGUF_TYPES,
    LLAMA3_VOCAB,
    LLAMA32_TEMPLATE,
    convert_to_gguf,
    converter_dir,
    find_converter,
    gguf_metadata,
    install_converter,
    ollama_modelfile,
)
from .parity import (  # noqa: F401
    PARITY_PROMPTS,
    PARITY_TOKENS,
    VERIFY_PARAGRAPH,
    _same_template,
    compare_answers,
    parity_chats,
    parity_record,
)

log = logging.getLogger(__name__)

FORMATS = tuple(EXPORT_FORMATS)


@dataclass
class Export:
    """What one export wrote and how its check went."""
    format: str
    path: Path
    files: list[str]
    seconds: float
    check: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"export {self.format}: {self.path} ({', '.join(self.files)}) in {self.seconds:.1f} s\n"
                f"  check: {self.check}")


# ---------------------------------------------------------------- model card

def model_card(run, fmt: str, tokenizer, files: Sequence[str], check: dict[str, Any],
               parity: dict[str, Any] | None = None) -> str:
    """README.md of an export: base model, run id, params, metrics, chat template, EOS, check."""
    cfg = run.params()
    summary = run.summary().model_dump(by_alias=True, exclude_unset=True)  # the figures summary.json holds
    evaluation = summary.get("evaluation") or {}
    metrics = {k: {"base": (evaluation.get("base") or {}).get(k), "tuned": (evaluation.get("tuned") or {}).get(k)}
               for k in registry.MODEL_CARD_METRICS
               if k in (evaluation.get("tuned") or {})}
    usage = {
        "adapter": "PeftModel.from_pretrained(base, this folder), or FastLanguageModel.from_pretrained(this folder)",
        "merged": "AutoModelForCausalLM.from_pretrained(this folder); vLLM: `vllm serve <this folder>`",
        "gguf": "llama.cpp: `llama-cli -m <file>.gguf`; Ollama: `FROM ./<file>.gguf` in a Modelfile; "
                "transformers: from_pretrained(folder, gguf_file=...)",
    }[fmt]
    lines = [
        f"# POLO Easy: run {run.id} ({fmt})", "",
        "- base model: `{}` ({})".format(*local_models.portable_name(cfg.model.model_name)),
        f"- run: `{run.id}`, params `{cfg.name}` (hash {cfg.short_hash()})",
        f"- files: {', '.join(f'`{f}`' for f in files)}",
        f"- use: {usage}",
        f"- eos: `{tokenizer.eos_token}` (id {tokenizer.eos_token_id}); training stopped answers there",
        "", "## Training", "",
        "```json", json.dumps(summary.get("training") or {}, indent=2, ensure_ascii=False), "```",
        *(["", "## Align (these weights: the SFT adapter trained further on the task's rewards)", "",
           "```json", json.dumps({**summary["align"], "rewards": dict(cfg.align.rewards) if cfg.align else None},
                                 indent=2, ensure_ascii=False), "```"]
          if summary.get("align") and inference.is_aligned(run) else []),
        "", "## Evaluation (base vs tuned)", "",
        "```json", json.dumps({"evaluation": evaluation.get("id"), "split": evaluation.get("split"),
                               "examples": evaluation.get("examples"),
                               "metrics": metrics}, indent=2, ensure_ascii=False), "```",
        "", "## Params", "", "```yaml",
        yaml.safe_dump(_portable_params(cfg), sort_keys=False, allow_unicode=True).strip(),
        "```", "", "## Chat template (from the run's tokenizer, as in training)", "",
        "```jinja", tokenizer.chat_template or "(none)", "```",
        "", "## Easy prompt", "", "```text", prompts.SYSTEM_PROMPT, "", prompts.USER_TEMPLATE, "```",
        "", "## Check after export", "", "```json", json.dumps(check, indent=2, ensure_ascii=False), "```", "",
    ]
    if parity:
        rows = [f"| {p['export']} | {p['against']} | {p['expected']} | {p['identical']} of {p['of']} | "
                f"{p['token_agreement']} | {p['why']} |" for p in parity["pairs"]]
        lines += ["## Parity: the same prompts, the same answers?", "",
                  f"{parity['prompts']} prompts ({parity['source']}), greedy, {parity['max_new_tokens']} new tokens; "
                  "token ids compared (parity.json has where each pair first differs).", "",
                  "| export | against | expected | identical answers | token agreement | why |",
                  "|---|---|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- exports

def export_dir(run, fmt: str) -> Path:
    return run.path / "export" / fmt


def require_merged(run) -> Path:
    """The run's merged export folder; a ModelError saying how to make it when there is none."""
    folder = export_dir(run, "merged")
    if not (folder / "config.json").is_file():
        raise ModelError(f"run {run.id} has no merged export in {folder}: run "
                         f"`polo export {run.id} --format merged` first, or leave out --merged.")
    return folder


def load_merged(run, cfg):
    """The run's merged export, loaded as training loads a base (the run's tokenizer is the caller's)."""
    return inference.load_merged(cfg, require_merged(run))


def _check_request(run, fmt: str, gguf_types: Sequence[str], overwrite: bool) -> None:
    """Every refusal before any model loads."""
    if fmt not in FORMATS:
        raise PoloError(f"--format '{fmt}': choose one of {', '.join(FORMATS)}.")
    inference.require_adapter(run)
    bad = [t for t in gguf_types if t not in GGUF_TYPES]
    if bad:
        raise PoloError(f"GGUF type(s) {bad} not supported offline; choose from {', '.join(GGUF_TYPES)} "
                        "(smaller ones such as q4_k_m need llama.cpp's compiled llama-quantize).")
    if fmt == "gguf":
        find_converter()
    if export_dir(run, fmt).exists() and not overwrite:
        raise RunError(f"{export_dir(run, fmt)} already exists: "
                       + say("pass --force", "pass overwrite=True") + " to replace it.")


def export(run, fmt: str, gguf_types: Sequence[str] = DEFAULT_GGUF_TYPES, overwrite: bool = False) -> Export:
    """Export a run as `fmt` into run/export/<fmt>/, with a model card, checked by reloading."""
    gguf_types = tuple(gguf_types)
    _check_request(run, fmt, gguf_types, overwrite)
    start = time.perf_counter()
    result: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        builder = {"adapter": _build_adapter, "merged": _build_merged, "gguf": _build_gguf}[fmt]
        result.update(builder(run, tmp, gguf_types))
        parity = result.pop("_parity")
        (tmp / "parity.json").write_text(json.dumps(parity, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        result["parity"] = {p["export"]: {k: p[k] for k in ("expected", "identical", "of", "token_agreement")}
                            for p in parity["pairs"]}
        _name_base_portably(run, tmp)
        tokenizer = inference.run_tokenizer(run)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / "README.md").write_text(model_card(run, fmt, tokenizer, files, result, parity), encoding="utf-8")

    target = atomic_replace_dir(export_dir(run, fmt), build)
    done = Export(fmt, target, sorted(p.name for p in target.iterdir()), time.perf_counter() - start, result)
    run.update_manifest(exports={fmt: {"path": str(target), "files": done.files, "check": result,
                                       "seconds": round(done.seconds, 1)}})
    return done


def _portable_params(cfg) -> dict[str, Any]:
    """The params as the card shows them: the model by its portable name, without the file they
    were read from on this machine (the run id and params hash name them)."""
    body = {k: v for k, v in cfg.to_dict().items() if k not in ("source", "chosen_by")}
    body["model"] = {**body["model"], "model_name": local_models.portable_name(cfg.model.model_name)[0]}
    return body


def _name_base_portably(run, out: Path) -> None:
    """An exported adapter names its base as another machine can find it (PEFT saved this
    machine's path of the base folder): the hub id or local model name the params gave."""
    config_path = out / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = local_models.portable_name(run.params().model.model_name)[0]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_adapter(run, out: Path, _types) -> dict[str, Any]:
    """The saved adapter + tokenizer as they are; checked by loading base + adapter and generating,
    and by loading the exported files as a user would (PEFT on the base) for parity."""
    for p in run.adapter.iterdir():
        if p.is_file() and p.name != "README.md":
            shutil.copy2(p, out / p.name)
    chats, source = parity_chats(run)
    lm = inference.load_tuned(run.params(), run)
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(lm.model)
    check = {"reloaded": "base + adapter (FastLanguageModel)",
             **inference.check_generates(lm.model, lm.tokenizer, VERIFY_PARAGRAPH)}
    reference = inference.greedy_ids(lm.model, inference.run_tokenizer(run), chats, PARITY_TOKENS)
    del lm
    inference.free_memory()
    exported = _answers_of_exported_adapter(run, out, chats)
    return {**check, "_parity": parity_record(source, chats, [
        ("adapter export (PEFT on the base)", "the run's adapter", reference, exported, True,
         "the same weights and arithmetic")])}


def _answers_of_exported_adapter(run, out: Path, chats) -> list[list[int]]:
    from peft import PeftModel

    base = inference.load_base(run.params())
    model = PeftModel.from_pretrained(base.model, str(out))
    try:
        return inference.greedy_ids(model, inference.run_tokenizer(run), chats, PARITY_TOKENS)
    finally:
        del model, base
        inference.free_memory()


def _tuned_answers(run, chats) -> list[list[int]]:
    """The run's model (base + adapter, loaded as evaluation loads it) answering `chats`, then freed."""
    lm = inference.load_tuned(run.params(), run)
    try:
        return inference.greedy_ids(lm.model, inference.run_tokenizer(run), chats, PARITY_TOKENS)
    finally:
        del lm
        inference.free_memory()


def merge_into(run, out: Path, chats=None) -> tuple[Path, list[list[int]] | None]:
    """Base + adapter merged into 16-bit weights with Unsloth's save_pretrained_merged; with `chats`,
    the tuned model's greedy answers to them first (the reference of parity)."""
    reference = _tuned_answers(run, chats) if chats else None
    # On a GPU a 4-bit hub base (the default recipe) is not dequantized: Unsloth downloads its
    # 16-bit original (unsloth/Llama-3.2-3B-Instruct, ~6.4 GB) and merges LoRA into those shards
    # (README, "Merging a 4-bit base"). On a CPU a 4-bit run merges into its local 16-bit base.
    # The tuned model is freed before the merged one is reloaded to check it.
    return inference.merge_to_16bit(run.params(), run, out), reference


def _build_merged(run, out: Path, _types) -> dict[str, Any]:
    from transformers import AutoTokenizer

    chats, source = parity_chats(run)
    _, reference = merge_into(run, out, chats)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    _same_template(run, tokenizer.chat_template, tokenizer.eos_token_id, "merged model")
    on_disk = json.loads((out / "config.json").read_text(encoding="utf-8"))
    dtype = on_disk.get("dtype") or on_disk.get("torch_dtype")
    check = inference.reload_and_check(out, tokenizer, VERIFY_PARAGRAPH, "AutoModelForCausalLM",
                                       parity=(chats, PARITY_TOKENS))
    tuned = run.manifest().get("decisions") or {}
    same = tuned.get("dtype") == dtype and not tuned.get("load_in_4bit")
    why = "the same weights and arithmetic" if same else (
        "the adapter ran on the 4-bit base; the merge is 16-bit" if tuned.get("load_in_4bit") else
        f"the merged weights are rounded to {dtype} on disk; the adapter ran in {tuned.get('dtype', '?')}")
    return {"dtype_on_disk": dtype, **check, "_parity": parity_record(source, chats, [
        ("merged", "the run's adapter", reference, check.pop("answers"), same, why)])}


def _build_gguf(run, out: Path, gguf_types: Sequence[str]) -> dict[str, Any]:
    """Merge into a scratch folder beside `out`, convert once per type, reload each with transformers;
    parity: each file against the merged model it was converted from, and the Ollama Modelfile."""
    scratch = out.parent / f"{out.name}.merged"
    chats, source = parity_chats(run)
    try:
        merge_into(run, scratch)
        tokenizer = inference.run_tokenizer(run)
        merged = inference.reload_and_check(scratch, tokenizer, VERIFY_PARAGRAPH, "merged",
                                            parity=(chats, PARITY_TOKENS))["answers"]
        checks, pairs = {}, []
        for outtype in _progress(gguf_types):
            path = convert_to_gguf(scratch, out / f"{run.id}-{outtype}.gguf", outtype)
            meta = gguf_metadata(path)
            _same_template(run, meta["chat_template"], meta["eos_token_id"], path.name)
            # transformers dequantizes a GGUF file on load: reloaded at reload_options' dtype, not q8_0.
            checks[path.name] = {"bytes": path.stat().st_size, "architecture": meta["architecture"],
                                 "eos_token_id": meta["eos_token_id"],
                                 **inference.reload_and_check(out, tokenizer, VERIFY_PARAGRAPH,
                                                              "transformers gguf_file=", gguf_file=path.name,
                                                              parity=(chats, PARITY_TOKENS))}
            same = GGUF_SAME_ARITHMETIC.get(outtype)
            pairs.append((path.name, "the merged model it was converted from", merged,
                          checks[path.name].pop("answers"), same is not None, same or GGUF_ROUNDING[outtype]))
        smallest = min(out.glob("*.gguf"), key=lambda p: p.stat().st_size)
        (out / "Modelfile").write_text(ollama_modelfile(tokenizer, smallest.name), encoding="utf-8")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**checks, "_parity": parity_record(source, chats, pairs)}


def _progress(types: Sequence[str]):
    from tqdm.auto import tqdm

    return tqdm(types, desc="GGUF", unit="file")
