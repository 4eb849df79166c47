"""The recipe, once: each stage as a short top-down function, and `run_pipeline` that chains them.

    prepare_stage   tokenizer -> validate, clean, group, split, count tokens -> data/processed/
    train_stage     data -> plan -> memory check -> model + LoRA -> trainer -> fit -> adapter, plots
    align_stage     SFT adapter -> rewards (GRPO) or preference pairs (DPO) -> aligned adapter, reward plot
    evaluate_stage  base and tuned answers -> metrics, chart, examples -> report.md

The notebooks make the same calls cell by cell (tests/test_recipe_sequence.py keeps them in the
same order); `polo run`, queues, sweep trials, `make demo`, the benchmarks and the tests call
these functions or run those notebooks, so every path records the same manifest and report.

`run_pipeline` resolves the params once: the preflight checks that object, the run folder
records it as params.yaml, and each notebook stage reads that file back. With `in_process`
(`polo run --in-process`) each stage's function runs in the calling process instead: the same
records, no kernel to start (about 15 s a stage on a CPU, Unsloth's import included) and no
executed notebook in the run folder.
"""
from __future__ import annotations

import gc
import os
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import align, data, evaluate, model, paths, progress, reports, runs, train
from . import params as params_lib
from .errors import PoloError

STAGES = {"prepare": "prepare_data.ipynb", "train": "train.ipynb", "align": "align.ipynb",
          "evaluate": "evaluate.ipynb"}


def prepared_already(cfg) -> str | None:
    """The inputs hash when data/processed/ already holds what prepare_stage would write for
    these params (raw file, data params, tokenizer and template unchanged); else None."""
    return data.current_hash(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length, cfg.checks)


def prepare_stage(cfg, run: runs.Run | None = None) -> data.Prepared:
    """Raw records -> processed splits on disk, token counts from the model's own chat template."""
    tokenizer = model.load_tokenizer(cfg.model)
    prepared = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks)
    data.save(prepared, cfg.data)
    runs.finish_stage(run, "prepare")
    return prepared


def train_stage(cfg, run: runs.Run, callbacks: list | None = None, live: bool | None = None) -> train.Session:
    """Fine-tune into `run` (opened with stage="train"): adapter, loss curve, summary, report.

    `callbacks`: extra TrainerCallbacks (a sweep's pruner). Raises before loading the model when
    the schedule or the memory estimate cannot work.
    """
    dataset = data.load_or_prepare(cfg)
    ready = train.check_before_loading(cfg, dataset, run)
    lm = model.load(cfg, ready.device)
    run.update_manifest(model=lm.applied, model_notes=lm.notes)
    session = train.build(lm, dataset, cfg, run, ready, live=live, callbacks=callbacks)
    train.fit(session)
    train.finish(session)
    runs.finish_stage(run, "train")
    reports.write_report(run)
    return session


def align_stage(cfg, run: runs.Run, live: bool | None = None) -> align.AlignSession:
    """Train the run's SFT adapter further on the task's rewards (opened with stage="align"): GRPO or DPO as
    the params' align section says, into adapter_aligned/ (the run's model from now on; adapter/ is kept).
    Raises before loading the model when there is no SFT adapter or the section cannot work."""
    dataset = data.load_or_prepare(cfg)
    ready = align.check_before_loading(cfg, dataset, run)
    lm = model.load(cfg, ready.device)
    session = align.build(lm, cfg, run, ready, live=live)
    align.fit(session)
    align.finish(session)
    runs.finish_stage(run, "align")
    reports.write_report(run)
    return session


def evaluate_stage(cfg, run: runs.Run):
    """Base vs tuned on the held-out split into a new evaluation of `run` (opened with
    stage="evaluate"): eval/<id>/ (params, predictions, metrics, chart, examples), then the
    summary's latest evaluation and report.md."""
    evaluation = runs.start_evaluation(run, cfg)
    dataset = data.load_processed(cfg.data)
    predictions = evaluate.predict(evaluation, cfg, dataset)
    table = evaluate.score(predictions, cfg, evaluation)
    evaluate.chart(table, evaluation)
    evaluate.examples(predictions, evaluation)
    runs.finish_stage(run, "evaluate")
    reports.write_report(run)
    return table


# ------------------------------------------------------------------ many stages, one run folder

def available_stages() -> list[str]:
    return [s for s, nb in STAGES.items() if (paths.NOTEBOOKS_DIR / nb).is_file()]


def default_stages(cfg=None) -> list[str]:
    """Every stage but align, which runs when the params have an align section."""
    return [s for s in available_stages() if s != "align" or (cfg is not None and cfg.align is not None)]


def check_stages(stages: Sequence[str] | None, cfg=None) -> list[str]:
    stages = list(stages or default_stages(cfg))
    unknown = [s for s in stages if s not in available_stages()]
    if unknown:
        raise PoloError(f"unknown stage(s) {unknown}; available: {', '.join(available_stages())}")
    if "align" in stages and cfg is not None and cfg.align is None:
        raise PoloError(f"the align stage needs an align section in the params ('{cfg.name}' has none): use a "
                        "file with one (params/cpu_align.yaml) or --set align.method=grpo (or dpo)")
    return stages


def resolve(params_file: str, overrides: dict[str, Any] | None = None, name: str | None = None):
    """The params a run will use, resolved once (file < overrides); `name` replaces the file's
    name in the run id (a queue's variants). Raises on any problem, before any work."""
    cfg = params_lib.load(params_file, overrides=overrides)
    return cfg.model_copy(update={"name": name}) if name else cfg


def run_pipeline(params_file: str, overrides: dict[str, Any] | None = None,
                 stages: Sequence[str] | None = None, run_id: str | None = None,
                 name: str | None = None, preflight: bool = True,
                 log: Callable[[str], None] = print, queue: dict[str, Any] | None = None,
                 replicate: dict[str, Any] | None = None, in_process: bool = False) -> runs.Run:
    """Resolve the params, check them (preflight), open the run folder, then execute each
    stage's notebook into it (papermill), or with `in_process` its function in this process.
    `name` replaces the params name in the run id; `queue` marks the run as a queue's step in
    its manifest (`latest` then passes it by); `replicate` ({group, index, of, seed}:
    replicates.plan) tags it into a replicate group."""
    from . import preflight as preflight_lib

    cfg = resolve(params_file, overrides, name)
    stages = check_stages(stages, cfg)
    evaluate_only = stages == ["evaluate"]
    prepared = None
    if preflight and "train" in stages and run_id is None:
        report = preflight_lib.run_checks(cfg)
        if not report.ok:
            raise PoloError("preflight failed, nothing was started:\n" +
                            "\n".join(f"  {f}" for f in report.failures()))
        prepared = report.prepared  # what the prepare stage would write: saved below, not made twice
    # Evaluating an existing run again may change how (limit, decoding), never what was trained; aligning a
    # trained run may bring its align section.
    may_differ = ("evaluation",) if evaluate_only else \
        ("align", "evaluation") if run_id and set(stages) <= {"align", "evaluate"} else ()
    run = runs.open_run(cfg, run_id, may_differ=may_differ)
    if queue:
        run.update_manifest(queue=queue)
    if replicate:
        runs.tag_replicate(run, **replicate)
    log(f"run {run.id}\n  folder: {run.path}")
    stage_params = params_file_for(run, cfg, may_differ)
    for i, stage in enumerate(stages, 1):
        if stage == "prepare" and _prepare_from_cache(run, cfg, prepared, f"[{i}/{len(stages)}] prepare", log):
            continue
        log(f"[{i}/{len(stages)}] {stage}: {'in this process' if in_process else STAGES[stage]}")
        start = time.perf_counter()
        if in_process:
            execute_in_process(run, stage, cfg)
        else:
            execute_notebook(run, stage, {"params_file": str(stage_params), "run_id": run.id})
        log(f"  {stage} done in {time.perf_counter() - start:.0f} s")
    reports.conclude(run, "finished")
    return run


def params_file_for(run: runs.Run, cfg, may_differ: Sequence[str]):
    """The file every notebook stage reads: the run's params.yaml, or, when a section may differ
    (evaluating again with another limit), this stage's resolved params beside it."""
    if not may_differ:
        return run.params_path
    path = run.notebooks / "params-evaluate.yaml"
    params_lib.save(cfg, path)
    return path


def _prepare_from_cache(run: runs.Run, cfg, prepared, label: str, log) -> bool:
    """True when the prepare stage has nothing left to do: the processed data on disk was made
    from these inputs (skipped, with the hash), or the preflight already prepared them in memory
    (saved now, without a kernel). False: run the prepare notebook."""
    if prepared is None:  # no preflight: hash the inputs here
        key = prepared_already(cfg)
    else:  # the preflight's splits carry the hash of their inputs: no second tokenizer load
        key = prepared.stats["inputs_hash"] if data.prepared_hash(cfg.data) == prepared.stats["inputs_hash"] else None
    if key:
        log(f"{label}: skipped, inputs unchanged (hash {key}): {data.processed_path(cfg.data)}")
        run.skip_stage("prepare", inputs_hash=key)
        return True
    if prepared is None:
        return False
    run.start_stage("prepare")
    data.save(prepared, cfg.data)
    key = prepared.stats["inputs_hash"]
    runs.finish_stage(run, "prepare", by="preflight", inputs_hash=key)
    log(f"{label}: the preflight's splits saved (hash {key}): {data.processed_path(cfg.data)}")
    return True


def local_kernel_manager():
    """The kernel manager papermill starts each stage's kernel with: on Linux and macOS over IPC
    (Unix sockets in Jupyter's private runtime folder), so the kernel neither listens on TCP nor
    prints its "running over TCP without encryption" warning into the user's terminal."""
    from jupyter_client.manager import AsyncKernelManager

    if os.name != "posix":  # zmq has no IPC transport on Windows: TCP, as Jupyter does
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            from jupyter_core.paths import jupyter_runtime_dir

            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
            if len(str(runtime)) > 60:  # a Unix socket path has ~100 bytes: a private temp folder instead
                runtime = Path(tempfile.mkdtemp(prefix="polo-"))
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(runtime / f"polo-kernel-{os.getpid()}-{uuid.uuid4().hex[:8]}"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute_notebook(run: runs.Run, stage: str, parameters: dict[str, Any]) -> None:
    """One stage's notebook into run/notebooks/; a failing cell marks the run failed, naming it."""
    import papermill as pm

    notebook = STAGES[stage]
    out = run.notebooks / notebook
    try:  # the stage's own progress (steps, loss, time left) instead of papermill's cell counter
        with progress.watch(run.logs):
            pm.execute_notebook(str(paths.NOTEBOOKS_DIR / notebook), str(out), parameters=parameters,
                                kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False,
                                kernel_manager_class=local_kernel_manager())
    except pm.PapermillExecutionError as e:
        where = f"{out}, cell {e.exec_count}"
        run.fail(f"{e.ename}: {e.evalue}", where)
        reports.conclude(run)
        raise PoloError(f"stage '{stage}' failed: {e.ename}: {e.evalue}\n  see {where}") from None


def execute_in_process(run: runs.Run, stage: str, cfg) -> None:
    """One stage's function in this process: the calls its notebook makes (less what the notebook only
    shows), opened and recorded as the notebook opens and records it; a failure marks the run failed,
    naming the line, and is raised as a failing notebook's is. The stage's model is freed before the next."""
    run = runs.open_run(cfg, run.id, stage=stage, may_differ=IN_PROCESS_MAY_DIFFER[stage])
    try:
        with progress.watch(run.logs):
            result = RECIPES[stage](cfg, run)
        del result
    except Exception as e:  # noqa: BLE001 (recorded in the run, then raised as a PoloError naming the stage)
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{paths.display(Path(frame.filename))}:{frame.lineno} in {frame.name} ({stage} stage, in process)"
        run.fail(f"{type(e).__name__}: {e}", where)
        reports.conclude(run)
        raise PoloError(f"stage '{stage}' failed: {type(e).__name__}: {e}\n  at {where}") from e
    finally:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# The functions `run_pipeline(in_process=True)` calls, and the sections each stage's notebook lets differ from
# the run's params.yaml (as its open_run cell says).
RECIPES: dict[str, Callable[..., Any]] = {"prepare": prepare_stage, "train": train_stage, "align": align_stage,
                                          "evaluate": evaluate_stage}
IN_PROCESS_MAY_DIFFER: dict[str, tuple[str, ...]] = {"prepare": (), "train": (), "align": ("align",),
                                                     "evaluate": ("evaluation",)}
