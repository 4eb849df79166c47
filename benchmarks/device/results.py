"""The device check's record: one JSON and one markdown table, rewritten (atomically) after every
part, so a part that hangs, fails or is killed never loses what the parts before it measured (and a
training part's own result file is rewritten after every path, so it keeps the paths before)."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PENDING, RUNNING, OK, FAILED, TIMEOUT, SKIPPED = "pending", "running", "ok", "failed", "timeout", "skipped"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Results:
    """`results.json` + `results.md` in `folder` (names from `stem`)."""

    def __init__(self, folder: Path, stem: str, parts: list[str], header: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.json_path = self.folder / f"{stem}.json"
        self.md_path = self.folder / f"{stem}.md"
        self.data: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None,
            **(header or {}), "parts": {p: {"status": PENDING} for p in parts}}
        self._t0: dict[str, float] = {}
        self.write()

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def start(self, part: str) -> None:
        self._t0[part] = time.perf_counter()
        self.data["parts"][part] = {"status": RUNNING}
        self.write()

    def finish(self, part: str, status: str, result: Any = None, error: str | None = None, **extra: Any) -> None:
        entry: dict[str, Any] = {"status": status}
        if part in self._t0:
            entry["seconds"] = round(time.perf_counter() - self._t0[part], 1)
        if error:
            entry["error"] = error
        if result is not None:
            entry["result"] = result
        entry.update(extra)
        self.data["parts"][part] = entry
        self.write()

    def close(self) -> None:
        self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.write()

    def write(self) -> None:
        _atomic_write(self.json_path, json.dumps(self.data, indent=2, default=str) + "\n")
        try:
            text = markdown(self.data)
        except Exception as e:  # noqa: BLE001 - the table is a view of the JSON: never lose the JSON over it
            text = (f"# Device check\n\nThe table could not be rendered ({type(e).__name__}: {e}); "
                    f"see {self.json_path.name}.\n")
        _atomic_write(self.md_path, text)


def _first_line(text: Any, limit: int = 160) -> str:
    if not text:
        return ""
    if not isinstance(text, str):
        text = json.dumps(text, default=str)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return (line[:limit] + "...") if len(line) > limit else line.replace("|", "\\|")


def markdown(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    v = m.get("versions", {})
    lines = [f"# Device check {data.get('started', '')}", ""]
    if m and data.get("mode") == "cpu":
        lines += [f"CPU run (plumbing only: tiny Llama body, float32, no 4-bit); torch {v.get('torch')}, "
                  f"python {m.get('python')}; unsloth {v.get('unsloth')}, transformers {v.get('transformers')}, "
                  f"trl {v.get('trl')}, peft {v.get('peft')}, datasets {v.get('datasets')}", ""]
    elif m:
        lines += [f"GPU: {m.get('gpu', '?')} ({m.get('gpu_memory', '?')}, driver {m.get('driver', '?')}, "
                  f"compute capability {m.get('compute_capability', '?')}); torch {v.get('torch')} "
                  f"(CUDA {m.get('torch_cuda')}), python {m.get('python')}; unsloth {v.get('unsloth')}, "
                  f"unsloth_zoo {v.get('unsloth_zoo')}, bitsandbytes {v.get('bitsandbytes')}, transformers "
                  f"{v.get('transformers')}, trl {v.get('trl')}, peft {v.get('peft')}, "
                  f"datasets {v.get('datasets')}", ""]
    imports = data.get("parts", {}).get("imports", {}).get("result")
    tokenizer = imports.get("korean_tokenizer") if isinstance(imports, dict) else None
    if tokenizer:
        lines += [f"Korean tokens of the task metrics: {tokenizer}"
                  + (" (kiwipiepy is not here: sacrebleu 13a tokens, scores not comparable with Kiwi's)."
                     if tokenizer == "13a" else " (Kiwi morphemes)."), ""]
    if data.get("note"):
        lines += [data["note"], ""]
    lines += ["| part | status | seconds | note |", "|---|---|---|---|"]
    for name, p in data["parts"].items():
        note = _first_line(p.get("error")) or p.get("note", "")
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {note} |")
    lines.append("")
    rows, agree_notes = [], []
    for name, p in data["parts"].items():
        r = p.get("result")
        if isinstance(r, dict) and "median" in r:  # a training comparison (maybe cut short: the paths done)
            dtype = r.get("dtype", name)
            done, planned = r.get("paths_done", list(r["median"])), r.get("paths", list(r["median"]))
            verdict = "yes" if r.get("losses_agree") else ("NO" if len(done) > 1 else "not compared (one path)")
            agree_notes.append(f"{dtype}: {len(done)} of {len(planned)} paths finished; same tokens per step, same "
                               f"labelled tokens per example and per-step losses within {r.get('tolerance')} "
                               f"(relative) of {r.get('reference')}: {verdict}")
            for path, med in r["median"].items():
                agree = r.get("agreement", {}).get(path, {})
                rows.append(f"| {dtype} | {path} | {med.get('tokens_per_s')} | "
                            f"{med.get('cuda_max_allocated_mib', med.get('peak_rss_mib'))} | "
                            f"{med.get('load_seconds')} | {med.get('final_loss')} | {med.get('label_tokens')} | "
                            f"{agree.get('max_relative_loss_difference', '')} |")
    if rows:
        shape = "the tiny Llama body (CPU)" if data.get("mode") == "cpu" else "the 3B shape (random weights)"
        memory = "peak RSS (MiB)" if data.get("mode") == "cpu" else "peak VRAM allocated (MiB)"
        lines += [f"## Training at {shape}, batch 1 x 4, max length 1024", "",
                  f"| dtype | path | tokens/s | {memory} | load s | final loss | labelled tokens | "
                  "max rel. loss diff |", "|---|---|---|---|---|---|---|---|", *rows, "",
                  *(f"- {n}" for n in agree_notes), ""]
    for gen in (p.get("result") for name, p in data["parts"].items() if name.startswith("generation")):
        if not (isinstance(gen, dict) and isinstance(gen.get("tokens_per_s"), dict)):
            continue
        lines += ["## Generation: batched vs one at a time", "",
                  f"{gen.get('model')}, {gen.get('examples')} prompts, {gen.get('max_new_tokens')} new tokens, "
                  f"batch {gen.get('batch_size')}", "",
                  "| mode | tokens/s |", "|---|---|",
                  *(f"| {k} | {t} |" for k, t in gen["tokens_per_s"].items()),
                  f"| ratio | {gen.get('ratio_batched_over_single')}x |", ""]
    smoke = data["parts"].get("smoke", {}).get("result")
    if isinstance(smoke, dict) and smoke.get("steps"):
        lines += ["## Smoke pipeline (in-process library calls)", "", "| step | status | seconds | detail |",
                  "|---|---|---|---|"]
        for step in smoke["steps"]:
            lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | "
                         f"{_first_line(step.get('error')) or _first_line(step.get('detail'))} |")
        lines.append("")
    return "\n".join(lines)
