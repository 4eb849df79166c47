"""Run folders: one per experiment, never overwritten, holding everything about it.

outputs/runs/<run_id>/  params.yaml, manifest.json, notebooks/, checkpoints/, adapter/,
logs/, eval/<evaluation id>/, plots/, summary.json, report.md. run_id = UTC time + params name
+ short hash.

- `open_run` makes a run (or continues one with the same params) and starts a stage;
  `finish_stage` ends it. Every path (notebooks, pipeline, sweeps) uses these two.
- Each evaluation of a run gets its own folder, eval/<id>/, with the params it used
  (`start_evaluation`): evaluating again never overwrites an earlier one; `Run.evaluation()`
  is the latest finished one, and summary.json lists them all.
- `lookup` is the one way to name a run: its id, a unique prefix, or `latest`.
- `RunSummary` is summary.json's schema: `Run.update_summary` writes it, `read_summary` reads it.
- `registry` lists every run, damaged ones included. Reports are in `reports`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import params as params_lib
from . import paths, trackers
from .atomic import atomic_write_json, match_umask
from .errors import RunError
from .notebook import on_cell_error, say

log = logging.getLogger(__name__)

PACKAGES = ("torch", "unsloth", "unsloth_zoo", "trl", "transformers", "peft", "datasets", "accelerate",
            "papermill", "bitsandbytes")
SUBFOLDERS = ("notebooks", "checkpoints", "adapter", "logs", "eval", "plots")


def _read_json(path: Path) -> dict[str, Any]:
    """A run file's content; {} before it is first written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


class _Section(BaseModel):
    # Known figures are typed; a figure added later (or by a user's callback) is kept, not refused.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TrainingSummary(_Section):
    """train.fit's headline figures (train.finish writes them)."""
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_pct: float | None = Field(None, alias="trainable_%")
    steps: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    eval_loss_first: float | None = None
    eval_loss_best: float | None = None
    early_stopping_metric: str | None = None  # what early stopping and the best checkpoint followed
    best_metric: float | None = None          # its best value (the trainer's, after step 0)
    # evaluation.during_training: each task metric at the first evaluation (the base model, step 0),
    # the last, and the best: chrf_first, chrf_last, chrf_best, ...
    task_metrics: dict[str, float | None] = {}
    best_checkpoint: str | None = None
    early_stopped: bool = False
    early_stopped_at_step: int | None = None
    early_stopping_patience: int | None = None  # as trained: 0 where the file's gave way to a short run
    plan_notes: list[str] = []                # train.Plan.notes: what gave way to the run length asked for
    tokens_per_s: float | None = None
    train_seconds: float | None = None          # train.TIME_FIGURES says what each time figure measures
    baseline_eval_seconds: float | None = None  # older runs have train_runtime instead (kept as an extra)
    resumed_from: str | None = None


class EvaluationSummary(_Section):
    """One evaluation's metrics (evaluate.score), base and tuned, by metric name (chrf, bleu, ...)."""
    id: str | None = None  # its folder: eval/<id>/ (None: a run evaluated before evaluations had folders)
    split: str
    examples: int
    base: dict[str, float | None] = {}
    tuned: dict[str, float | None] = {}


class SweepSummary(_Section):
    """The trial this run was in a sweep: its status and objective value."""
    sweep_id: str
    trial: int
    status: str
    objective: str | None = None
    value: float | None = None
    pruned_at_step: int | None = None


class RunSummary(_Section):
    """summary.json: a run's headline figures, machine-readable. Read with `read_summary`
    (Run.summary), written only by Run.update_summary."""
    run_id: str | None = None
    training: TrainingSummary | None = None
    evaluation: EvaluationSummary | None = None  # the latest finished evaluation
    evaluations: list[EvaluationSummary] = []  # every finished evaluation, oldest first
    stage_seconds: dict[str, float | None] = {}
    sweep: SweepSummary | None = None

    def figure(self, dotted: str) -> float | None:
        """A number by dotted path, e.g. training.eval_loss_best or evaluation.tuned.chrf; None when
        absent or not a number."""
        node: Any = self.model_dump(by_alias=True)
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def read_summary(path: Path, run_id: str | None = None) -> RunSummary:
    """The one reader of summary.json. Missing: an empty summary. Unreadable or not matching the
    schema: RunError naming the file and the problem."""
    try:
        return RunSummary.model_validate(_read_json(path) or {"run_id": run_id})
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise RunError(f"{path}: {where}: {first['msg']} ({len(e.errors())} problem(s))") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Run:
    id: str
    path: Path

    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
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
    from .inference import require_adapter

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


def new_run_id(cfg) -> str:
    """UTC time + params name + hash of the resolved params; a suffix if that folder exists."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return _unused_name(paths.runs_dir(), f"{stamp}-{cfg.name}-{cfg.short_hash()}")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to {folder} ({e.strerror}). Point POLO_OUTPUTS at a writable "
                       "folder or fix the permissions.") from None


def open_run(cfg, run_id: str | None = None, stage: str | None = None,
             may_differ: tuple[str, ...] = (), create: bool = True) -> Run | None:
    """A new run folder (run_id None), or the existing run `run_id` with the same params;
    `stage`: that stage starts now (finish it with `finish_stage`).

    create=False: no run_id means no run (None), for a stage that may run alone outside any
    run, as prepare_data.ipynb does; with `polo run` it is a stage of that run.

    The resolved params are written before any work starts. Continuing a run with different
    params is refused: a run folder describes one experiment. Sections in `may_differ`
    (the evaluate stage's `evaluation`) may change; the values used are recorded per stage.
    """
    if run_id is None and not create:
        return None
    if run_id is None:
        from .device import decide, describe

        device = describe()
        decisions = decide(device, cfg.model, cfg.lora, cfg.training)  # a GPU recipe on a CPU: refused, no folder made
        check_writable(paths.runs_dir())
        run_id = new_run_id(cfg)
        run = Run(run_id, paths.runs_dir() / run_id)
        run.path.mkdir(parents=True)
        for sub in SUBFOLDERS:
            (run.path / sub).mkdir()
        params_lib.save(cfg, run.params_path)
        atomic_write_json(run.manifest_path, _initial_manifest(run, cfg, device, decisions))
    else:
        run = lookup(run_id, status=None)
        check_writable(run.path)
        saved = run.params()
        differ = [d for d in _differences(saved.to_dict(), cfg.to_dict()) if d[0].split(".", 1)[0] not in may_differ]
        if differ and _only_the_micro_batch_split(differ, saved, cfg, run):
            _record_split_change(run, saved, cfg)
        elif differ:
            text = "; ".join(f"{key}: {a!r} in the run, {b!r} now" for key, a, b in differ[:8])
            raise RunError(f"run {run_id} was made with other params ({text}). Continue it with the same params "
                           "(only a new split of the same effective batch, per_device_train_batch_size x "
                           "gradient_accumulation_steps, may change in an unfinished training), or start a new run ("
                           + say("leave out --run-id", "run_id = None") + ").")
    if stage:
        run.start_stage(stage)
        for section in may_differ:
            run.update_manifest(**{f"{stage}_params": {section: cfg.to_dict()[section]}})
        on_cell_error(run.fail)
    return run


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every param that differs."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in params_lib.META:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


MICRO_BATCH = "training.per_device_train_batch_size"
ACCUMULATION = "training.gradient_accumulation_steps"


def _split(training) -> tuple[int, int]:
    return training.per_device_train_batch_size, training.gradient_accumulation_steps


def _only_the_micro_batch_split(differ: list[tuple[str, Any, Any]], saved, cfg, run: Run) -> bool:
    """True when only the micro-batch and accumulation differ, their product (the effective batch,
    the samples per optimizer step) is the same, and the run's training has not finished: then the
    run may continue from its last checkpoint with the new split (the way out of running out of
    memory) and trains on the same samples per step."""
    if {key for key, _, _ in differ} - {MICRO_BATCH, ACCUMULATION}:
        return False
    (bs, ga), (new_bs, new_ga) = _split(saved.training), _split(cfg.training)
    finished = (run.manifest().get("training") or {}).get("status") == "finished"
    return bs * ga == new_bs * new_ga and not finished


def _record_split_change(run: Run, saved, cfg) -> None:
    """params.yaml (`saved`, as the run has it) takes the new split (the rest of the training uses
    it); the manifest keeps every change, so the record says which steps trained with which split."""
    names = ("per_device_train_batch_size", "gradient_accumulation_steps")
    before, after = dict(zip(names, _split(saved.training))), dict(zip(names, _split(cfg.training)))
    manifest = run.manifest()
    out_of_memory = (manifest.get("training") or {}).get("out_of_memory") or {}
    change = {"at": _now(), "out_of_memory_at_step": out_of_memory.get("step"), "from": before, "to": after,
              "effective_batch": after[names[0]] * after[names[1]]}
    params_lib.save(saved.model_copy(update={"training": saved.training.model_copy(update=after)}), run.params_path)
    run.update_manifest(batch_split_changes=[*(manifest.get("batch_split_changes") or []), change])


def _initial_manifest(run: Run, cfg, device, decisions) -> dict[str, Any]:
    return {
        "run_id": run.id, "params_name": cfg.name, "params_source": cfg.source, "params_chosen_by": cfg.chosen_by,
        "params_hash": cfg.short_hash(), "status": "created", "created": _now(), "updated": _now(),
        "seed": cfg.training.seed, "git": git_state(), "versions": package_versions(),
        "python": platform.python_version(), "platform": platform.platform(),
        "device": device.as_dict(), "stages": {}, "error": None,
        # what this device will run the params with: the same function model.load and training use
        "decisions": decisions.as_dict(),
    }


# Notebooks are kept in git without their outputs by nbstripout (a maintained tool) as git's clean
# filter: .gitattributes names the files, `make setup` installs the filter (install_notebook_filter).
# The working copy keeps what the user ran; git stores and compares the stripped notebook, so running
# one changes nothing that `git diff` or a commit sees, does not make a run's manifest say dirty, and
# `git pull` does not conflict on outputs. Chosen over Jupytext pairing: the .ipynb stays the one file
# Colab opens from the repository, papermill runs and the tests read, with no paired .py copy to keep
# in step.
# Stripped besides outputs, execution counts and nbstripout's defaults (cell timings, collapsed and
# scrolled flags): what front ends write by themselves when a notebook is opened or run: JupyterLab's
# full language_info (the committed one names only the language) and collapsed headings, VS Code's
# interpreter, papermill's records. Cell ids are kept (--keep-id): nbstripout would renumber them.
NOTEBOOK_FILTER_EXTRA_KEYS = (
    *(f"metadata.language_info.{key}" for key in ("codemirror_mode", "file_extension", "mimetype",
                                                  "nbconvert_exporter", "pygments_lexer", "version")),
    "cell.metadata.jp-MarkdownHeadingCollapsed", "metadata.vscode", "metadata.papermill", "cell.metadata.papermill",
)


def notebook_filter(python: str = sys.executable) -> str:
    """The clean filter's shell command: a notebook on stdin, its stripped form on stdout."""
    return f"{shlex.quote(python)} -m nbstripout --keep-id --extra-keys '{' '.join(NOTEBOOK_FILTER_EXTRA_KEYS)}'"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """git in `root`, with the notebook filter whether or not this clone's config has it (a clone whose
    owner never ran `make setup` still compares notebooks stripped). 60 s: on a busy machine the filter
    (a Python start per notebook saved since git last looked) takes seconds."""
    return subprocess.run(["git", "-c", f"filter.nbstripout.clean={notebook_filter()}", *args], cwd=root,
                          capture_output=True, text=True, timeout=60)


def _refresh(root: Path) -> None:
    """Refresh git's record of file times and sizes (as `git status` does). Without it, files written in
    the same second as the index (a fresh clone) are re-read through the filter at every look: 6 notebooks
    took 14 s per `git diff` on a busy 2-core machine."""
    _git(root, "update-index", "-q", "--refresh")


def install_notebook_filter(root: Path | None = None) -> bool:
    """Set the notebook filter in the git config of the checkout at `root` (this project by default):
    local to that clone, as every git filter (.gitattributes, committed, only names it). False outside
    a git checkout (an unpacked archive), where there is nothing to keep clean.

    Not `filter.nbstripout.required`: after `make clean` removes the venv, git then warns that the filter
    cannot run and stores the notebook as it is, instead of refusing every commit that touches one."""
    root = root or paths.PROJ_ROOT
    command = notebook_filter()
    try:
        subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True, timeout=10, check=True)
        for key, value in (("filter.nbstripout.clean", command), ("filter.nbstripout.smudge", "cat"),
                           ("diff.ipynb.textconv", f"{command} --textconv")):  # `git diff` shows stripped notebooks
            subprocess.run(["git", "config", "--local", key, value], cwd=root, capture_output=True, timeout=10,
                           check=True)
        _refresh(root)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def install_jupyter_hook(config_dir: Path | None = None) -> Path:
    """Have Jupyter servers started from this Python's environment (`make lab`, `jupyter lab`) call
    `after_jupyter_save` after each save: the hook set in <prefix>/etc/jupyter/jupyter_server_config.json
    (or in `config_dir`), whatever else that file holds kept."""
    path = (config_dir or Path(sys.prefix) / "etc" / "jupyter") / "jupyter_server_config.json"
    config = _read_json(path)
    config.setdefault("ContentsManager", {})["post_save_hook"] = f"{__name__}.after_jupyter_save"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, config)
    return path


def after_jupyter_save(os_path: str, **_: Any) -> None:
    """Jupyter's post-save hook: when a tracked notebook was saved with nothing changed but its outputs
    (what the filter strips), tell git so, and `git status` stays clean.

    Git's status takes a file whose size changed for modified without reading it, filter or not (nbstripout
    issue 65), so an executed notebook would be listed although `git diff` shows nothing. `git add` of such
    a file stages nothing (its stripped form is what the index holds) and records its new size. A notebook
    with a real change, an untracked one, or one outside a git checkout is left alone. Never raises: a
    failing hook would fail the save."""
    path = Path(os_path)
    if path.suffix != ".ipynb":
        return
    try:
        tracked = _git(path.parent, "ls-files", "--error-unmatch", "--", path.name).returncode == 0
        if tracked and _git(path.parent, "diff", "--quiet", "--", path.name).returncode == 0:
            _git(path.parent, "add", "--", path.name)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("%s: could not refresh git's view of the saved notebook (%s)", path, e)


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repo this package runs from (None outside a git checkout).

    Dirty: a tracked file's content differs from the commit as git would store it, staged or not:
    notebooks are compared stripped, so running one is not a change of the code a run was made with.
    (`git diff`, which reads the content, not `git status`, which takes a changed size for a change.)"""
    try:
        _refresh(root or paths.PROJ_ROOT)
        head = _git(root or paths.PROJ_ROOT, "rev-parse", "HEAD")
        diff = _git(root or paths.PROJ_ROOT, "diff", "HEAD", "--quiet")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode or diff.returncode not in (0, 1):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": diff.returncode == 1}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; None for one that is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def finish_stage(run: Run | None, stage: str, **info: Any) -> Run | None:
    """The stage ended well: its time, status and `info` go into the manifest. None (a stage run
    outside any run, see open_run's create) is left as it is."""
    if run is not None:
        run.finish_stage(stage, **info)
        tracked = trackers.log_stage_end(run, run.params())
        if tracked:
            run.update_manifest(trackers=tracked)
    return run


LATEST = "latest"
STATUSES = ("running", "finished", "failed", "pruned", "damaged")  # damaged: no readable manifest (registry)
# What made a run: `polo run` or a notebook, a step of a queue, a trial of a sweep (manifest keys).
KINDS = ("run", "queue", "sweep")
REF_HELP = ("a run id, a unique prefix of one, a run folder, or latest (the newest finished run made by polo run "
            "or a notebook; latest:sweep, latest:queue or latest:any for sweep trials, queue steps or any run)")


def run_folders() -> list[Path]:
    """Every run folder (one with params.yaml), oldest first: run ids start with their UTC time."""
    root = paths.runs_dir()
    return sorted(p for p in root.iterdir() if (p / "params.yaml").is_file()) if root.exists() else []


def kind_of(manifest: dict[str, Any]) -> str:
    """'sweep' for a sweep trial, 'queue' for a queue step, else 'run' (polo run, a notebook)."""
    return "sweep" if manifest.get("sweep") else "queue" if manifest.get("queue") else "run"


def lookup(ref: str | Path | None = LATEST, status: str | None = "finished") -> Run:
    """The one way to name a run, in every command and notebook (REF_HELP): its id, a unique
    prefix of it, its folder's path, or `latest` / None: the newest run with `status` (None: any
    status) made by `polo run` or a notebook. Sweep trials and queue steps are runs too, but
    `latest` never means one of them unless asked: `latest:sweep`, `latest:queue`, `latest:any`."""
    folders = run_folders()
    ref = LATEST if ref is None else str(ref).strip()
    if ref == LATEST or ref.startswith(LATEST + ":"):
        return _latest(folders, ref.partition(":")[2] or "run", status)
    if os.sep in ref or ref.startswith(".") or (Path(ref).is_dir() and (Path(ref) / "params.yaml").is_file()):
        folder = Path(ref).expanduser()
        if not (folder / "params.yaml").is_file():
            raise RunError(f"{ref} is not a run folder (no params.yaml in it). {REF_HELP[0].upper()}{REF_HELP[1:]}.")
        folder = folder.resolve()
        return Run(folder.name, folder)
    exact = [p for p in folders if p.name == ref]
    matches = exact or [p for p in folders if p.name.startswith(ref)]
    if len(matches) == 1:
        return Run(matches[0].name, matches[0])
    if matches:
        raise RunError(f"run '{ref}' is ambiguous: {len(matches)} runs start with it "
                       f"({', '.join(p.name for p in matches[:5])}). Give more of the id.")
    known = [p.name for p in folders[-5:]]
    raise RunError(f"run '{ref}' not found in {paths.runs_dir()}. Latest runs: {', '.join(known) or 'none'}. "
                   f"Give {REF_HELP}.")


def _latest(folders: list[Path], kind: str, status: str | None) -> Run:
    if kind not in (*KINDS, "any"):
        raise RunError(f"'latest:{kind}': unknown kind; use latest, latest:sweep, latest:queue or latest:any.")
    others: dict[str, int] = {}
    for path in reversed(folders):
        run = Run(path.name, path)
        try:
            manifest = run.manifest()
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a damaged run (polo list shows it) is never `latest`
        if status is not None and manifest.get("status") != status:
            continue
        found = kind_of(manifest)
        if kind in ("any", found):
            return run
        others[found] = others.get(found, 0) + 1
    what = {"run": "run made by polo run or a notebook", "queue": "queue step", "sweep": "sweep trial",
            "any": "run"}[kind]
    hint = "; ".join(f"{n} {k} run(s): latest:{k}" for k, n in others.items())
    raise RunError(f"no {status + ' ' if status else ''}{what} in {paths.runs_dir()}"
                   + (f" (there are {hint})" if hint else "")
                   + ". Train one first (notebooks/train.ipynb, `polo run` or `make demo`).")


REGISTRY_COLUMNS = ["run_id", "kind", "params", "status", "created", "steps", "epochs", "loss_first", "loss_last",
                    "eval_loss_first", "eval_loss_best", "early_stopped", "tokens_per_s", "trainable_%",
                    "chrf_base", "chrf_tuned", "train_seconds", "problem"]


def _registry_row(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": path.name, "problem": None}
    problems = []
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        row.update(kind=kind_of(manifest), params=manifest.get("params_name"), status=manifest.get("status"),
                   created=manifest.get("created"))
        if manifest.get("status") == "failed" and manifest.get("error"):
            problems.append(f"failed: {manifest['error'].get('message', '')[:120]}")
    except FileNotFoundError:
        row["status"] = "damaged"
        problems.append("no manifest.json")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        row["status"] = "damaged"
        problems.append(f"manifest.json unreadable ({type(e).__name__})")
    try:
        summary = read_summary(path / "summary.json")
    except RunError as e:
        row["status"] = "damaged"
        problems.append(f"summary.json {str(e).split(': ', 1)[1]}")
    else:
        if summary.training:
            row.update(summary.training.model_dump(by_alias=True, include=set(REGISTRY_COLUMNS) | {"trainable_pct"}))
        if summary.evaluation:
            row.update(chrf_base=summary.evaluation.base.get("chrf"), chrf_tuned=summary.evaluation.tuned.get("chrf"))
    row["problem"] = "; ".join(problems) or None
    return row


def registry(status: str | None = None):
    """Every run in outputs/runs/ as a DataFrame, newest last. Failed, running and damaged
    runs are listed (status, problem), never a crash."""
    import pandas as pd

    root = paths.runs_dir()
    rows = [_registry_row(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")] \
        if root.exists() else []
    df = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    if status is not None:
        df = df[df["status"] == status]
    return df.set_index("run_id")
