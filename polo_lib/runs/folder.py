"""A run's folder and its evaluations: Run (manifest, summary, stages), Evaluation, start_evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import params as params_lib
from ..atomic import atomic_write_json, match_umask
from ..errors import RunError
from .summary import EvaluationSummary, RunSummary, _read_json, read_summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Run:
    id: str
    path: Path

    checkpoints = property(lambda self: self.path / "checkpoints")
    sft_adapter = property(lambda self: self.path / "adapter")  # what the train stage saved, kept as it was
    aligned_adapter = property(lambda self: self.path / "adapter_aligned")  # the align stage's, from the SFT one
    align_dir = property(lambda self: self.path / "align")  # align's checkpoints and preference pairs

    @property
    def adapter(self) -> Path:
        """The run's model: the aligned adapter once the align stage saved one, else the SFT adapter."""
        return self.aligned_adapter if (self.aligned_adapter / "adapter_config.json").is_file() else self.sft_adapter

    logs = property(lambda self: self.path / "logs")
    eval = property(lambda self: self.path / "eval")
    plots = property(lambda self: self.path / "plots")
    notebooks = property(lambda self: self.path / "notebooks")
    manifest_path = property(lambda self: self.path / "manifest.json")
    params_path = property(lambda self: self.path / "params.yaml")

    def manifest(self) -> dict[str, Any]:
        return _read_json(self.manifest_path)

    def update_manifest(self, **changes: Any) -> dict[str, Any]:
        """Merge `changes` (one level deep for dicts) and rewrite manifest.json atomically."""
        data = self.manifest()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        data["updated"] = _now()
        atomic_write_json(self.manifest_path, data)
        return data

    summary_path = property(lambda self: self.path / "summary.json")

    def summary(self) -> RunSummary:
        """summary.json, typed; an empty RunSummary before it is first written."""
        return read_summary(self.summary_path, self.id)

    def update_summary(self, **sections: Any) -> RunSummary:
        """The one writer of summary.json: replaces whole sections (training, evaluation,
        stage_seconds, sweep), validated against RunSummary before anything is written."""
        current = self.summary().model_dump(by_alias=True, exclude_none=True)
        summary = RunSummary.model_validate({**current, **sections, "run_id": self.id})
        atomic_write_json(self.summary_path, summary.model_dump(by_alias=True, mode="json"))
        return summary

    def start_stage(self, stage: str) -> None:
        stages = self.manifest().get("stages", {})
        stages[stage] = {"status": "running", "start": _now()}
        self.update_manifest(stages=stages, status="running", error=None)

    def finish_stage(self, stage: str, **info: Any) -> dict[str, Any]:
        stages = self.manifest().get("stages", {})
        entry = stages.get(stage, {"start": _now()})
        end = datetime.now(timezone.utc)
        entry.update(info, status="finished", end=end.isoformat(timespec="seconds"),
                     seconds=round((end - datetime.fromisoformat(entry["start"])).total_seconds(), 1))
        stages[stage] = entry
        if stage == "evaluate":
            self._end_evaluation("finished")
        self.record_stage_seconds(stages)
        match_umask(self.path)  # weights and checkpoints that libraries saved through private temp files
        return self.update_manifest(stages=stages, status="finished")

    def evaluations(self, status: str | None = None) -> list[Evaluation]:
        """Every evaluation of this run (`status`: only those), oldest first, from the manifest."""
        return [Evaluation(self, e["id"], self.eval / e["id"]) for e in self.manifest().get("evaluations") or []
                if status in (None, e.get("status"))]

    def evaluation(self, ref: str | None = None) -> Evaluation | None:
        """The latest finished evaluation (None before the first), or the one whose id is or
        starts with `ref`; RunError listing this run's evaluations when none or several match."""
        if ref is None:
            finished = self.evaluations("finished")
            return finished[-1] if finished else None
        every = self.evaluations()
        matches = [e for e in every if e.id == ref] or [e for e in every if e.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(e.id for e in every) or "none yet"
        raise RunError(f"run {self.id}: {'several evaluations start with' if matches else 'no evaluation'} "
                       f"'{ref}'. Its evaluations: {known}.")

    def _end_evaluation(self, status: str) -> None:
        """The evaluation in progress ends with `status`. A finished one's metrics become summary.json's
        `evaluation` (the latest) and join its `evaluations`."""
        entries = self.manifest().get("evaluations") or []
        running = [e for e in entries if e.get("status") == "running"]
        if not running:
            return
        for entry in running:
            entry.update(status=status, end=_now())
        self.update_manifest(evaluations=entries)
        for entry in running if status == "finished" else []:
            body = _read_json(self.eval / entry["id"] / "metrics.json")
            if body:
                scores = body.get("metrics", {})
                section = EvaluationSummary(id=entry["id"], split=body["split"], examples=body["examples"],
                                            base={k: v.get("base") for k, v in scores.items()},
                                            tuned={k: v.get("tuned") for k, v in scores.items()})
                self.update_summary(evaluation=section, evaluations=[*self.summary().evaluations, section])

    def record_stage_seconds(self, stages: dict[str, Any]) -> RunSummary:
        """summary.json's stage times, from the manifest's stages."""
        return self.update_summary(stage_seconds={k: v.get("seconds") for k, v in stages.items()})

    def skip_stage(self, stage: str, **why: Any) -> dict[str, Any]:
        """The stage had nothing to do (its inputs are unchanged): recorded, with why."""
        stages = self.manifest().get("stages", {})
        stages[stage] = {"status": "skipped", "start": _now(), "end": _now(), "seconds": 0.0, **why}
        return self.update_manifest(stages=stages)

    def fail(self, error: str, where: str | None = None) -> None:
        stages = self.manifest().get("stages", {})
        for entry in stages.values():
            if entry.get("status") == "running":
                entry.update(status="failed", end=_now())
        self._end_evaluation("failed")
        match_umask(self.path)
        self.update_manifest(stages=stages, status="failed", error={"message": error, "where": where})

    def params(self):
        return params_lib.load_resolved(self.params_path)

    def _repr_html_(self) -> str:
        m = self.manifest()
        chosen = f" ({m['params_chosen_by']})" if m.get("params_chosen_by") else ""
        return (f"<b>run</b> <code>{self.id}</code><br>folder: <code>{self.path}</code><br>"
                f"params: <code>{m.get('params_name', '?')}</code>{chosen}; "
                f"device: {(m.get('device') or {}).get('name', '?')}, "
                f"{(m.get('decisions') or {}).get('dtype', '?')}")

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run, in its own folder eval/<id>/: params.yaml (the params it used: the
    run's, with its own `evaluation` section), predictions.jsonl, metrics.json, metrics.png and
    examples.md. Its status and times are in the run's manifest (`evaluations`)."""
    run: Run
    id: str
    path: Path

    params_path = property(lambda self: self.path / "params.yaml")

    def entry(self) -> dict[str, Any]:
        """Its manifest entry: status, start, end, split, limit."""
        return next((e for e in self.run.manifest().get("evaluations") or [] if e.get("id") == self.id), {})

    def params(self):
        return params_lib.load_resolved(self.params_path)

    def metrics(self) -> dict[str, Any]:
        """metrics.json (split, examples, decoding, metrics, speed); {} before it is written."""
        return _read_json(self.path / "metrics.json")

    def _repr_html_(self) -> str:
        entry = self.entry()
        return (f"<b>evaluation</b> <code>{self.id}</code> of run <code>{self.run.id}</code> "
                f"({entry.get('status', '?')}; split {entry.get('split')}, limit {entry.get('limit')})<br>"
                f"folder: <code>{self.path}</code>")

    def __str__(self) -> str:
        return str(self.path)


def start_evaluation(run: Run, cfg) -> Evaluation:
    """A new evaluation of `run` (opened with stage="evaluate"): eval/<id>/ with the params it uses,
    and a running entry in the manifest's `evaluations`; `finish_stage(run, "evaluate")` ends it.
    The id is the UTC time, the split and the limit (20261203-101500-test-all). A run without an
    adapter is refused before anything is made."""
    from ..inference import require_adapter

    require_adapter(run)
    e = cfg.evaluation
    eval_id = _unused_name(run.eval, f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{e.split}-{e.limit or 'all'}")
    evaluation = Evaluation(run, eval_id, run.eval / eval_id)
    evaluation.path.mkdir(parents=True)
    params_lib.save(cfg, evaluation.params_path)
    entry = {"id": eval_id, "status": "running", "start": _now(), "split": e.split, "limit": e.limit}
    run.update_manifest(evaluations=[*(run.manifest().get("evaluations") or []), entry])
    return evaluation


def _unused_name(folder: Path, base: str) -> str:
    """`base`, or base-2, base-3, ... when folder/base exists."""
    name, n = base, 1
    while (folder / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name
