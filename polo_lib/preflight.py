"""Check an experiment before it costs anything: params, files, model, data, template, memory.

The seeds lost hours to a configuration that was silently not active and to relative paths
that broke; each check here says what will really apply and stops a run that cannot work.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from . import data, local_models, model, params, paths
from . import device as device_lib
from .errors import PoloError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Report:
    rows: list[dict[str, str]]
    prepared: data.Prepared | None = None  # the splits the template check made: polo run saves them
    @property
    def ok(self) -> bool:
        return all(r["status"] != FAIL for r in self.rows)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["check", "status", "detail"]).set_index("check")

    def failures(self) -> list[str]:
        return [f"{r['check']}: {r['detail']}" for r in self.rows if r["status"] == FAIL]

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __str__(self) -> str:
        width = max(len(r["check"]) for r in self.rows)
        return "\n".join(f"{r['status']:>4}  {r['check']:<{width}}  {r['detail']}" for r in self.rows)


Check = Callable[[params.Params, dict], tuple[str, str]]  # (cfg, found so far) -> (status, detail)


def _outputs(cfg, found):
    from .runs import check_writable

    check_writable(paths.runs_dir())
    return OK, f"{paths.runs_dir()} is writable"


def _raw_data(cfg, found):
    count, _, examples, _ = data.read_examples(cfg.data, cfg.checks is not None and cfg.checks.include_drafts)
    papers = list(dict.fromkeys(e.paper for e in examples))
    return OK, (f"{count} valid records ({cfg.data.format}) in {', '.join(cfg.data.raw_files)}: {len(examples)} "
                f"examples" + (f" from {len(papers)} papers ({', '.join(papers)})" if len(papers) > 1 else ""))


def _trackers(cfg, found):
    from . import trackers

    trackers.check(cfg.training.report_to)
    where = {"mlflow": "MLflow store " + trackers.mlflow_uri() if "mlflow" in cfg.training.report_to else None}
    return OK, ", ".join(where.get(t) or t for t in cfg.training.report_to)


def _precision(cfg, found):
    device = found["device"] = device_lib.describe()
    decisions = device_lib.decide(device, cfg.model, cfg.lora, cfg.training)
    detail = (f"{decisions.precision} on {device.kind} ({device.name}), optimizer {decisions.optim}, "
              f"gradient checkpointing {decisions.gradient_checkpointing}")
    if decisions.notes:
        return WARN, f"{detail}; " + " ".join(decisions.notes) + " (set load_in_4bit: false to say so)"
    return OK, detail


def _model_found(cfg, found):
    where = local_models.resolve(cfg.model.model_name)
    how = local_models.check_reachable(where)  # offline: fails here, within seconds, before any "ok"
    if how == "local":
        return OK, f"local folder {where}"
    return OK, "hub id, in the local cache" if how == "cached" else "hub id (the hub answers; downloaded on first use)"


def _architecture(cfg, found):
    config = found["config"] = model.load_config(cfg.model.model_name)
    total, per_type, lora_r1 = model.lora_shapes(config, cfg.lora.target_modules)
    trainable = sum(lora_r1.values()) * cfg.lora.r
    return OK, (f"{config.model_type}, {total / 1e6:.1f}M parameters; LoRA r={cfg.lora.r} on "
                f"{', '.join(cfg.lora.target_modules)}: {trainable:,} trainable "
                f"({100 * trainable / (total + trainable):.2f}%)")


def _memory(cfg, found):
    estimate = model.estimate_memory(cfg, device=found.get("device"), config=found.get("config"))
    model.check_memory(estimate, enabled=cfg.model.memory_check)
    return (OK if estimate.fits else WARN), (f"~{estimate.total / 2**30:.1f} GiB needed, "
                                             f"{estimate.available / 2**30:.1f} GiB free")


def _template_and_lengths(cfg, found):
    from . import train

    tokenizer = model.load_tokenizer(cfg.model)
    markers = train.derive_markers(tokenizer)
    prepared = found["prepared"] = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks)
    worst = []
    for split in ("train", "validation"):
        ds = {"messages": [e["messages"] for e in prepared.examples[split]]}
        counts = train.label_counts(ds, tokenizer, markers)
        train.check_labels(split, [e["id"] for e in prepared.examples[split]], counts, markers)
        worst.append(min(counts))
    schedule = train.plan(cfg.training, len(prepared.examples["train"]), cfg.overridden)
    if problems := schedule.problems():
        return FAIL, " ".join(problems)
    longest = max(max(v) for v in prepared.lengths.values() if v)
    dropped = sum(len(v) for v in prepared.dropped.values())
    evaluations = f"{schedule.eval_at[:6]}{'...' if schedule.evaluations > 6 else ''}"
    detail = (f"markers {markers.instruction!r} / {markers.response!r}; every example keeps answer tokens "
              f"(min {min(worst)}); longest example {longest} of max_seq_length {cfg.model.max_seq_length}; "
              f"{schedule.total_steps} steps, evaluations at {evaluations}")
    warnings = schedule.warnings() + ([f"{dropped} over-length example(s) will be dropped"] if dropped else [])
    if warnings:
        return WARN, detail + "; " + "; ".join(warnings)
    return OK, detail


def _run_one(rows: list[dict[str, str]], name: str, check: Check, cfg, found: dict) -> bool:
    """One check as a row; any error is a failed check, named. True unless it failed."""
    try:
        status, detail = check(cfg, found)
    except PoloError as e:
        status, detail = FAIL, str(e)
    except Exception as e:  # noqa: BLE001 - a library error is still a failed check, named in the report
        status, detail = FAIL, f"{type(e).__name__}: {e}"
    rows.append({"check": name, "status": status, "detail": detail})
    return status != FAIL


def run_checks(cfg: params.Params) -> Report:
    """Every check of resolved params (`params.load`, `pipeline.resolve`), even after a failure
    where the next one can still run, so one pass shows all."""
    rows: list[dict[str, str]] = [{"check": "params", "status": OK,
                                   "detail": f"{cfg.source} (hash {cfg.short_hash()})"}]
    found: dict[str, Any] = {}  # what one check learned and a later one uses (device, model config)
    _run_one(rows, "outputs folder", _outputs, cfg, found)
    _run_one(rows, "raw data", _raw_data, cfg, found)
    _run_one(rows, "experiment trackers", _trackers, cfg, found)
    if not _run_one(rows, "precision and device", _precision, cfg, found):
        return Report(rows)  # a GPU recipe on a CPU: nothing else matters
    if _run_one(rows, "model", _model_found, cfg, found):
        for name, check in (("architecture and LoRA targets", _architecture), ("memory", _memory),
                            ("chat template, masking, lengths", _template_and_lengths)):
            _run_one(rows, name, check, cfg, found)
        if cfg.align is not None:
            _run_one(rows, "align stage memory", _align, cfg, found)
    return Report(rows, found.get("prepared"))


def _align(cfg, found):
    """The align stage's memory on this machine, when the params have an align section."""
    from . import align

    estimate = align.memory(cfg, device=found.get("device"), config=found.get("config"))
    model.check_memory(estimate, enabled=cfg.model.memory_check)
    return (OK if estimate.fits else WARN), (f"{cfg.align.method}: ~{estimate.total / 2**30:.1f} GiB needed for "
                                             f"{align.sequences_per_step(cfg.align)} sequences a step, "
                                             f"{estimate.available / 2**30:.1f} GiB free")


def plan_tables(cfg, device) -> dict[str, pd.DataFrame]:
    """What a recipe would run with on `device` (a Device, e.g. a named profile), without loading
    anything: the device decisions, the evaluation plan, the parameter counts from the
    architecture and the memory estimate. `polo plan PARAMS --device t4` prints them.

    The plan's data size is the split before the length check (no tokenizer needed).
    """
    from . import train

    decisions = device_lib.decide(device, cfg.model, cfg.lora, cfg.training)
    capability = (f", compute capability {'.'.join(map(str, device.compute_capability))}"
                  if device.compute_capability else "")
    rows = [("device", f"{device.name} ({device.kind}{capability}, "
                       f"bitsandbytes {'yes' if device.bitsandbytes else 'no'}, "
                       f"NF4 4-bit {'runs' if device.nf4 else 'does not run'})"),
            ("precision", decisions.precision), ("trainer fp16 / bf16", f"{decisions.fp16} / {decisions.bf16}"),
            ("optimizer", decisions.optim), ("gradient checkpointing", str(decisions.gradient_checkpointing)),
            *[("note", n) for n in decisions.notes]]
    if not device.cuda:  # said once, here, in our words (Unsloth's import banner is silenced where nothing trains)
        rows.append(("speed", "no CUDA GPU: training runs on the CPU, far slower than on a GPU (measured speeds: "
                              "benchmarks/results/); fine for the SmolLM2 demo, not for a 3B model"))
    config = model.load_config(cfg.model.model_name)
    n_train = data.split_sizes(cfg.data, cfg.checks is not None and cfg.checks.include_drafts)["train"]
    tables = {
        "decisions": pd.DataFrame(rows, columns=["decision", "value"]).set_index("decision"),
        "plan": train.plan(cfg.training, n_train, cfg.overridden).table(),
        "parameters": model.recipe_parameter_table(cfg, config),
        "memory": model.estimate_memory(cfg, device, config).table(),
    }
    if cfg.align is not None:
        from . import align

        tables["align"] = align.plan.table(cfg)
        tables["align memory"] = align.memory(cfg, device, config).table()
    return tables
