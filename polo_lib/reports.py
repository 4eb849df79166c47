"""Markdown reports: a run's report.md, and the tables queue and sweep reports are made of.

Written from the run folder alone (manifest.json, summary.json, eval/<id>/, plots/), so a report
can be regenerated at any time: `polo report RUN`.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import registry
from .atomic import atomic_write_text
from .device import Decisions
from .errors import PoloError, RunError
from .runs import Run, RunSummary


def cell_text(v: Any, limit: int | None = None) -> str:
    """One table cell for people: blank for None/NaN, whole floats as integers (steps 13, not
    13.0), other floats to 4 significant digits, one line, cut to `limit` characters with '...'."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        v = str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    text = " ".join(str(v).split())
    return text if limit is None or len(text) <= limit else text[:max(1, limit - 3)] + "..."


def text_table(table, width: int, limit: int = 60, note: str = "") -> str:
    """A DataFrame as a plain-text table for a terminal `width` columns wide: cells as cell_text
    (long ones cut at `limit`), columns dropped from the right until it fits, and a last line
    naming what was left out and where the whole is (`note`, e.g. "--json" or a file)."""
    frame = table.reset_index() if table.index.name else table
    full = {str(c): [cell_text(v) for v in frame[c]] for c in frame.columns}
    columns = [c for c in full if any(full[c]) or frame.empty]  # a column blank in every row says nothing
    cells = {c: [v if len(v) <= limit else cell_text(v, limit) for v in values] for c, values in full.items()}
    widths = {c: max([len(c), *map(len, cells[c])]) for c in columns}
    numeric = {str(c) for c in frame.columns if frame[c].dtype.kind in "iuf"}
    shown = columns[:1]
    for c in columns[1:]:
        room = width - sum(widths[x] + 2 for x in shown)
        if widths[c] > room:
            if c not in numeric and room >= 20:  # text gets what is left of the line, cut to it
                cells[c] = [cell_text(v, room) for v in full[c]]
                widths[c] = max([len(c), *map(len, cells[c])])
                shown.append(c)
            break
        shown.append(c)

    def line(values) -> str:
        return "  ".join(values(c).rjust(widths[c]) if c in numeric else values(c).ljust(widths[c])
                         for c in shown).rstrip()

    lines = [line(lambda c: c)] + [line(lambda c, i=i: cells[c][i]) for i in range(len(frame))]
    hidden = columns[len(shown):]
    names = ", ".join(hidden[:4]) + (", ..." if len(hidden) > 4 else "")
    left = [f"{len(hidden)} more column(s): {names}"] if hidden else []
    left += ["long cells cut"] if any(len(v) > len(w) for c in shown for v, w in zip(full[c], cells[c])) else []
    if frame.empty:
        lines.append("(none)")
    elif left:
        lines.append(f"({'; '.join(left)}{'; ' + note if note else ''})")
    return "\n".join(lines)


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table; cells as cell_text (no NaN, whole floats as integers), pipes escaped."""
    def cell(v: Any) -> str:
        return cell_text(v).replace("|", "\\|")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, table) -> Path:
    """A DataFrame as CSV, atomically (a crash leaves the previous file whole)."""
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


def write_page(path: Path, title: str, facts: Sequence[str], sections: Sequence[tuple[str, Sequence[str]]]) -> Path:
    """A report page: `# title`, the facts as bullets, then each `## heading` with its lines.
    The queue and sweep reports are made with it."""
    lines = [f"# {title}", "", *(f"- {f}" for f in facts), ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    return atomic_write_text(path, "\n".join(lines))


def conclude(run: Run, status: str | None = None) -> Path:
    """A run's record made whole at its end, whatever its stages: the final status set (when
    given), summary.json's stage times brought up to the manifest's, then report.md written from
    both, so the three agree. Every path ends a run here: `polo run` and queue steps (pipeline),
    failed stages, sweep trials (after the sweep's verdict)."""
    manifest = run.update_manifest(status=status) if status else run.manifest()
    run.record_stage_seconds(manifest.get("stages") or {})
    return write_report(run)


def write_report(run: Run) -> Path:
    """report.md from the run folder alone: params, loss curve, metrics, examples, warnings.
    A damaged file in the folder becomes a warning in the report, never a crash."""
    manifest = run.manifest()
    warnings = list(manifest.get("model_notes") or [])
    out = _header(run, manifest)
    try:
        out += _training(run, run.summary(), warnings)
        out += _align(run, run.summary(), manifest)
    except RunError as e:
        warnings.append(str(e))
    out += _evaluation(run, warnings)
    out += _ratings(run, warnings)
    out += _params(run, warnings)
    if manifest.get("error"):
        warnings.append(f"failed: {manifest['error'].get('message')} ({manifest['error'].get('where')})")
    out += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"]) + [""]
    return atomic_write_text(run.path / "report.md", "\n".join(out))


def rendered(report: Path):
    """A report (report.md) to read in a notebook: its Markdown rendered, with the images it links
    (the loss curve, the metrics chart) inlined, since they lie beside the report, not the notebook."""
    import base64
    import re

    from IPython.display import Markdown

    folder = Path(report).parent

    def inline(match: re.Match) -> str:
        image = folder / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    text = Path(report).read_text(encoding="utf-8")
    return Markdown(re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", inline, text))


def _header(run: Run, manifest: dict[str, Any]) -> list[str]:
    git = manifest.get("git") or {}
    device = manifest.get("device") or {}
    out = [f"# Run {run.id}", "",
           f"- status: **{manifest.get('status', '?')}**, created {manifest.get('created', '?')}",
           f"- params: `{manifest.get('params_name', '?')}` (hash {manifest.get('params_hash', '?')})",
           f"- code: commit `{(git.get('commit') or '?')[:12]}`{' (dirty)' if git.get('dirty') else ''}",
           f"- device: {device.get('device', '?')} ({device.get('name', '?')})"]
    if manifest.get("decisions"):  # what ran, as loaded: the 4-bit layers are counted in the model, not assumed
        decisions = Decisions.from_dict(manifest["decisions"])
        layers = (manifest.get("model") or {}).get("linear4bit_layers")
        out.append(f"- precision: {decisions.precision}" + (f" ({layers} Linear4bit layers)" if layers else "")
                   + f", optimizer {decisions.optim}")
    out.append("")
    stages = manifest.get("stages") or {}
    if stages:
        out += ["## Stages", "", md_table([{"stage": k, **v} for k, v in stages.items()],
                                          ["stage", "status", "seconds", "start", "end"]), ""]
    return out


def _training(run: Run, summary: RunSummary, warnings: list[str]) -> list[str]:
    out = []
    t = summary.training
    if t is not None:
        from .train import TIME_FIGURES

        figures = t.model_dump(by_alias=True)
        rows = [{"figure": f"{k}.{sub}" if isinstance(v, dict) else k, "value": x, "meaning": TIME_FIGURES.get(k, "")}
                for k, v in figures.items() for sub, x in (v.items() if isinstance(v, dict) else [(None, v)])]
        out += ["## Training", "", md_table(rows, ["figure", "value", "meaning"]), ""]
        warnings.extend(t.plan_notes)
        if t.early_stopped:
            warnings.append(f"early stopping fired at step {t.early_stopped_at_step}; "
                            f"the best checkpoint ({t.best_checkpoint}) was kept")
    if (run.plots / "loss.png").is_file():
        out += ["![loss curve](plots/loss.png)", ""]
    return out


def _align(run: Run, summary: RunSummary, manifest: dict[str, Any]) -> list[str]:
    """The align stage: method, rewards and their weights, each logged figure first -> last (the mean of the
    first and of the last quarter of steps), the reward curves."""
    a = summary.align
    if a is None:
        return []
    settings = manifest.get("align") or {}
    weights = ", ".join(f"{k} {w:g}" for k, w in (settings.get("rewards") or {}).items())
    rows = [{"figure": k, "first": v.get("first"), "last": v.get("last")} for k, v in a.figures.items()]
    out = ["## Align", "",
           f"{a.method} for {a.steps} steps in {a.seconds} s from the SFT adapter (adapter/ kept; the run's model is "
           f"adapter_aligned/), KL weight beta {settings.get('beta')}; rewards (weights): {weights or '-'}"
           + (f"; {settings.get('pairs_count')} preference pairs from {settings.get('pairs')}" if a.method == "dpo"
              else "") + ".", "", md_table(rows, ["figure", "first", "last"]), ""]
    if (run.plots / "align.png").is_file():
        out += ["![align](plots/align.png)", ""]
    return out


def _evaluation(run: Run, warnings: list[str]) -> list[str]:
    """The latest finished evaluation in full (its params where they differ from the trained
    run's), then every evaluation of the run in one table."""
    every, latest = run.evaluations(), run.evaluation()
    out = []
    if latest is not None:
        body, folder = latest.metrics(), latest.path.relative_to(run.path).as_posix()
        scores = body.get("metrics", {})
        out += [f"## Evaluation ({body.get('split')}, {body.get('examples')} examples)", "",
                f"Evaluation `{latest.id}`, the latest of {len(every)}; its params: "
                f"[{folder}/params.yaml]({folder}/params.yaml){_evaluation_differs(run, latest, warnings)}", "",
                *comparison_table(scores, body.get("statistics")), ""]
        if body.get("vs_sft"):
            out += _aligned_vs_sft(body)
        if body.get("by_paper"):
            columns = list(body["by_paper"][0])
            out += ["### By paper", "", md_table(body["by_paper"], columns), ""]
        if (latest.path / "metrics.png").is_file():
            out += [f"![metrics]({folder}/metrics.png)", ""]
        if (latest.path / "examples.md").is_file():
            out += [f"Examples side by side: [{folder}/examples.md]({folder}/examples.md)", ""]
    if len(every) > 1 or (every and latest is None):
        rows = []
        for e in every:
            body = e.metrics()
            primary, name = body.get("metrics", {}).get(registry.PRIMARY_METRIC, {}), registry.PRIMARY_METRIC
            rows.append({**e.entry(), "examples": body.get("examples"),
                         f"{name} base": primary.get("base"), f"{name} tuned": primary.get("tuned")})
        columns = ["id", "status", "split", "limit", "examples", f"{registry.PRIMARY_METRIC} base",
                   f"{registry.PRIMARY_METRIC} tuned", "start"]
        out += ["## Every evaluation of this run", "", "Each in its own folder, eval/<id>/, oldest first.", "",
                md_table(rows, columns), ""]
    return out


def _ratings(run: Run, warnings: list[str]) -> list[str]:
    """Blind human ratings of the latest evaluation (polo rate), one row per comparison; nothing without."""
    from . import ratings

    try:
        every = ratings.summaries(run)
    except (PoloError, OSError, ValueError) as e:
        warnings.append(f"the human ratings could not be read: {e}")
        return []
    if not every:
        return []
    rows = [{"tuned vs": r.against, "ratings": r.overall["ratings"],
             "examples": f"{r.overall['examples']} of {r.overall['of_examples']}", "raters": r.overall["raters"],
             "tuned preferred": interval_text(r.overall["win_rate"], r.overall["low"], r.overall["high"]),
             "wins / ties / losses": f"{r.overall['wins']} / {r.overall['ties']} / {r.overall['losses']}",
             "kappa": cell_text(r.mean_kappa) if not r.agreement.empty else "-"} for r in every]
    return ["## Human ratings (blind)", "",
            md_table(rows, ["tuned vs", "ratings", "examples", "raters", "tuned preferred", "wins / ties / losses",
                            "kappa"]), "",
            "`tuned preferred`: the share of examples where raters preferred the tuned answer (ties count half), "
            "with a bootstrap interval over examples; `kappa`: Cohen's kappa between raters on the examples "
            "they both rated (mean over pairs of raters). Per rater: `polo rate RUN --results`.", ""]


def _aligned_vs_sft(body: dict[str, Any]) -> list[str]:
    """The aligned model (tuned) against the SFT model it started from, paired per example: which metrics were
    rewarded, so a reward that rose while the metrics no reward sees fell reads as reward hacking."""
    rewarded = body.get("rewarded") or []
    rows = [{"metric": k + (" (rewarded)" if k in rewarded else ""),
             "SFT": interval_text(v.get("base"), v.get("base_low"), v.get("base_high")),
             "aligned": interval_text(v.get("tuned"), v.get("tuned_low"), v.get("tuned_high")),
             "aligned - SFT": interval_text(v.get("delta"), v.get("delta_low"), v.get("delta_high")),
             "p": cell_text(v.get("p_value")), "verdict": v.get("verdict")} for k, v in body["vs_sft"].items()]
    return ["### Aligned against the SFT model", "",
            "The run was aligned (`adapter_aligned/`): `tuned` above is the aligned model. Here it is against the SFT "
            "model it started from (`adapter/`), on the same examples. Rewarded metrics: "
            + (", ".join(rewarded) or "none") + ". A rewarded metric that rises while those no reward sees "
            "(meaning, BLEU, ROUGE-L) fall is the reward being gamed; read the examples.", "",
            md_table(rows, ["metric", "SFT", "aligned", "aligned - SFT", "p", "verdict"]), ""]


def interval_text(value: Any, low: Any, high: Any) -> str:
    """'14.1 [8.2, 19.9]' for a mean and its interval; the mean alone where there is no interval."""
    if value is None:
        return ""
    if low is None or high is None:
        return cell_text(value)
    return f"{cell_text(value)} [{cell_text(low)}, {cell_text(high)}]"


def comparison_table(scores: dict[str, dict[str, Any]], statistics: dict[str, Any] | None = None) -> list[str]:
    """A base-vs-tuned table as markdown lines: each metric's mean per example with its interval,
    tuned - base with its paired interval and p-value, the verdict, and under it how many examples the
    statistics rest on and the smallest difference they could detect. An evaluation written before
    intervals were computed shows its delta and tuned_better."""
    if not scores or "verdict" not in next(iter(scores.values())):
        rows = [{"metric": k, **v} for k, v in scores.items()]
        return [md_table(rows, ["metric", "base", "tuned", "delta", "tuned_better"])]
    rows = [{"metric": k, "base": interval_text(v.get("base"), v.get("base_low"), v.get("base_high")),
             "tuned": interval_text(v.get("tuned"), v.get("tuned_low"), v.get("tuned_high")),
             "tuned - base": interval_text(v.get("delta"), v.get("delta_low"), v.get("delta_high")),
             "p": cell_text(v.get("p_value")), "detectable": cell_text(v.get("detectable")),
             "verdict": v.get("verdict")}
            for k, v in scores.items()]
    n = sorted({v.get("n") for v in scores.values() if v.get("n") is not None})
    how = (statistics or {}).get("interval", "bootstrap")
    clear = [k for k, v in scores.items() if v.get("verdict") in ("better", "worse", "differs")]
    return [md_table(rows, ["metric", "base", "tuned", "tuned - base", "p", "detectable", "verdict"]), "",
            f"Means over {'/'.join(map(str, n))} examples (each metric scored per example; {how} intervals; "
            "p: paired permutation test). `detectable`: the smallest tuned - base difference this many examples "
            "would show with 80% power. A verdict is clear only where the interval of tuned - base leaves out 0 "
            "and the permutation test agrees: "
            + (", ".join(f"{k} ({scores[k]['verdict']})" for k in clear) if clear else "none here") + "."]


def _evaluation_differs(run: Run, evaluation, warnings: list[str]) -> str:
    """', which differ from params.yaml in: limit 2 (trained: None)', or '' when they agree."""
    try:
        used, trained = evaluation.params().evaluation.model_dump(), run.params().evaluation.model_dump()
    except (PoloError, yaml.YAMLError, OSError) as e:
        warnings.append(f"{evaluation.params_path} could not be read: {e}")
        return ""
    differ = [f"{k} {used[k]} (params.yaml: {trained.get(k)})" for k in used if used[k] != trained.get(k)]
    return f", which differ from the run's params.yaml in: {', '.join(differ)}" if differ else ""


def _params(run: Run, warnings: list[str]) -> list[str]:
    from .data import load_stats, processed_path

    try:
        cfg = run.params()
    except (PoloError, yaml.YAMLError, OSError) as e:  # a damaged params.yaml is itself worth reporting
        warnings.append(f"params.yaml could not be read: {e}")
        return []
    if (processed_path(cfg.data) / "stats.json").is_file():
        dropped = load_stats(cfg.data).get("dropped_over_length", {})
        n = sum(len(v) for v in dropped.values())
        if n:
            warnings.append(f"{n} example(s) over max_seq_length were dropped: {dropped}")
    rows = [{"key": f"{s}.{k}", "value": v} for s, body in cfg.to_dict().items() if isinstance(body, dict)
            for k, v in body.items()]
    return ["## Params", "", "As trained (params.yaml); each evaluation's own are in its folder.", "",
            md_table(rows, ["key", "value"]), ""]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def headline(run: Run) -> list[str]:
    """The figures a person looks at first, as lines for a terminal: loss, eval loss, parameters,
    speed, base -> tuned metrics, time per stage."""
    manifest, summary = run.manifest(), run.summary()
    lines = [f"run folder: {run.path}"]
    t = summary.training
    if t is not None:
        lines += [
            f"loss: {_number(t.loss_first)} -> {_number(t.loss_last)} (train, first -> last logged step)",
            f"best eval_loss: {_number(t.eval_loss_best)} (first {_number(t.eval_loss_first)}), "
            f"early stopped: {t.early_stopped}",
            f"trainable: {t.trainable_params:,} of {t.total_params:,} parameters ({t.trainable_pct:.2f}%)",
            f"training speed: {t.tokens_per_s} tokens/s over {t.steps} steps",
        ]
        task = t.task_metrics
        lines += [f"{m.name} during training: {_number(task.get(f'{m.name}_first'))} (step 0) -> "
                  f"{_number(task.get(f'{m.name}_last'))} (last), best {_number(task.get(f'{m.name}_best'))}"
                  for m in registry.during_training() if f"{m.name}_first" in task]
    e = summary.evaluation
    if e is not None:
        count = f", the latest of {len(summary.evaluations)}" if len(summary.evaluations) > 1 else ""
        lines.append(f"evaluation {e.id or ''} on {e.examples} {e.split} paragraphs{count} (base -> tuned, "
                     "tuned - base with its 95% interval):")
        latest = run.evaluation()
        detail = (latest.metrics().get("metrics", {}) if latest is not None and latest.id == e.id else {})
        for key, base in e.base.items():
            d = detail.get(key, {})
            verdict = (f"  {interval_text(d.get('delta'), d.get('delta_low'), d.get('delta_high'))}  {d['verdict']}"
                       if d.get("verdict") else "")
            lines.append(f"  {key:<20} {_number(base):>8} -> {_number(e.tuned.get(key)):>8}{verdict}")
    stages = manifest.get("stages", {})
    lines.append("time per stage: " + ", ".join(f"{k} {v.get('seconds', '?')} s" for k, v in stages.items()))
    return lines
