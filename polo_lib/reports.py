"""Markdown reports: a run's report.md, and the tables queue and sweep reports are made of.

Written from the run folder alone (manifest.json, summary.json, eval/, plots/), so a report
can be regenerated at any time: `polo report RUN`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .runs import Run


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table; floats to 4 significant digits, pipes and newlines escaped."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run: Run) -> Path:
    """report.md from the run folder alone: params, loss curve, metrics, examples, warnings."""
    manifest, summary = run.manifest(), run.summary()
    out = [f"# Run {run.id}", ""]
    git = manifest.get("git") or {}
    device = manifest.get("device") or {}
    out += [f"- status: **{manifest.get('status', '?')}**, created {manifest.get('created', '?')}",
            f"- params: `{manifest.get('params_name', '?')}` (hash {manifest.get('params_hash', '?')})",
            f"- code: commit `{(git.get('commit') or '?')[:12]}`{' (dirty)' if git.get('dirty') else ''}",
            f"- device: {device.get('device', '?')} ({device.get('name', '?')})", ""]
    stages = manifest.get("stages") or {}
    if stages:
        out += ["## Stages", "", md_table([{"stage": k, **v} for k, v in stages.items()],
                                           ["stage", "status", "seconds", "start", "end"]), ""]
    warnings = list(manifest.get("model_notes") or [])
    training = summary.get("training") or {}
    if training:
        out += ["## Training", "", md_table([{"figure": k, "value": v} for k, v in training.items()],
                                             ["figure", "value"]), ""]
        if training.get("early_stopped"):
            warnings.append(f"early stopping fired at step {training.get('early_stopped_at_step')}; "
                            f"the best checkpoint ({training.get('best_checkpoint')}) was kept")
    if (run.plots / "loss.png").is_file():
        out += ["![loss curve](plots/loss.png)", ""]
    metrics_path = run.eval / "metrics.json"
    if metrics_path.is_file():
        body = json.loads(metrics_path.read_text(encoding="utf-8"))
        rows = [{"metric": k, **v} for k, v in body.get("metrics", {}).items()]
        out += [f"## Evaluation ({body.get('split')}, {body.get('examples')} examples)", "",
                md_table(rows, ["metric", "base", "tuned", "delta", "tuned_better"]), ""]
        if (run.plots / "metrics.png").is_file():
            out += ["![metrics](plots/metrics.png)", ""]
        if (run.eval / "examples.md").is_file():
            out += ["Examples side by side: [eval/examples.md](eval/examples.md)", ""]
    try:
        cfg = run.params()
        from .data import load_stats, processed_path

        if (processed_path(cfg.data) / "stats.json").is_file():
            dropped = load_stats(cfg.data).get("dropped_over_length", {})
            n = sum(len(v) for v in dropped.values())
            if n:
                warnings.append(f"{n} example(s) over max_seq_length were dropped: {dropped}")
        out += ["## Params", "", md_table([{"key": f"{s}.{k}", "value": v} for s, body in cfg.to_dict().items()
                                           if isinstance(body, dict) for k, v in body.items()], ["key", "value"]), ""]
    except Exception as e:  # a damaged params.yaml is itself worth reporting
        warnings.append(f"params.yaml could not be read: {e}")
    if manifest.get("error"):
        warnings.append(f"failed: {manifest['error'].get('message')} ({manifest['error'].get('where')})")
    out += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"]) + [""]
    return atomic_write_text(run.path / "report.md", "\n".join(out))


def headline(run: Run) -> list[str]:
    """The figures a person looks at first, as lines for a terminal: loss, eval loss, parameters,
    speed, base -> tuned metrics, time per stage."""
    manifest, summary = run.manifest(), run.summary()
    t = summary.get("training", {})
    lines = [f"run folder: {run.path}"]
    if t:
        lines += [
            f"loss: {t['loss_first']:.3f} -> {t['loss_last']:.3f} (train, first -> last logged step)",
            f"best eval_loss: {t['eval_loss_best']:.3f} (first {t['eval_loss_first']:.3f}), "
            f"early stopped: {t['early_stopped']}",
            f"trainable: {t['trainable_params']:,} of {t['total_params']:,} parameters ({t['trainable_%']:.2f}%)",
            f"training speed: {t['tokens_per_s']} tokens/s over {t['steps']} steps",
        ]
    evaluation = summary.get("evaluation")
    if evaluation:
        lines.append(f"evaluation on {evaluation['examples']} {evaluation['split']} paragraphs (base -> tuned):")
        for key, base in evaluation["base"].items():
            tuned = evaluation["tuned"].get(key)
            fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
            lines.append(f"  {key:<20} {fmt(base):>8} -> {fmt(tuned):>8}")
    stages = manifest.get("stages", {})
    lines.append("time per stage: " + ", ".join(f"{k} {v.get('seconds', '?')} s" for k, v in stages.items()))
    return lines
