"""The align session: the checks before loading, the trainer (TRL's GRPOTrainer or DPOTrainer on the run's SFT
adapter, its reference a frozen copy of that adapter), fit and finish (adapter_aligned/, plots/align.png)."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import device as device_lib
from .. import model as model_lib
from .. import plots, progress, trackers
from ..atomic import atomic_write_json
from ..errors import DataError, ParamsError, RunError
from ..notebook import in_notebook, readable
from ..train.resume import checkpoints_in
from . import plan
from .log import AlignRecorder, first_last
from .rewards import trl_functions


@dataclass(frozen=True)
class AlignReady:
    """What the checks before loading found: the training paragraphs, the preference pairs read from a file
    (None: GRPO, or self pairs sampled after loading), the glossary, the checkpoint to resume from."""
    align: Any
    rows: Any
    pairs: list[dict] | None
    glossary: list
    resume_from: Path | None
    memory: Any = None
    device: Any = None

    def table(self) -> pd.DataFrame:
        a = self.align
        rows = [("method", f"{a.method} (beta {a.kl_beta})"), ("steps", a.max_steps),
                ("training paragraphs", len(self.rows)),
                ("rewards", ", ".join(f"{k} {w:g}" for k, w in a.rewards.items())),
                ("answers per paragraph / max new tokens", f"{a.num_generations} / {a.max_new_tokens}"),
                ("pairs", f"{len(self.pairs)} from {a.pairs}" if self.pairs is not None else
                 ("sampled from the SFT model" if a.method == "dpo" else "none (GRPO samples as it trains)")),
                ("resume from", self.resume_from.name if self.resume_from else "fresh start"),
                ("memory needed / free", self.memory.needed_free() if self.memory is not None else "-")]
        return pd.DataFrame(rows, columns=["check", "value"]).set_index("check")

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def section(cfg):
    """The params' align section; ParamsError when the file has none."""
    if cfg.align is None:
        raise ParamsError(f"params '{cfg.name}' have no align section: add one (align: {{method: grpo}}, see "
                          "params/cpu_align.yaml) or set it, e.g. --set align.method=grpo")
    return cfg.align


def checkpoints(run) -> list[Path]:
    """The align checkpoints a resume can start from (a trainer state written), oldest first."""
    return [p for p in checkpoints_in(run.align_dir / "checkpoints") if (p / "trainer_state.json").is_file()]


def check_before_loading(cfg, dataset, run, device=None) -> AlignReady:
    """Every check that needs no model: an align section, the run's SFT adapter, the paragraphs, a glossary term
    where glossary coverage is rewarded, the pairs file read and validated, the memory estimate. Raises naming
    what to change."""
    from ..metrics import english_term_spans, load_glossary

    align = section(cfg)
    if not (run.sft_adapter / "adapter_config.json").is_file():
        raise RunError(f"run {run.id} has no SFT adapter in {run.sft_adapter}: align starts from it. Train first "
                       f"(polo run {cfg.name} --stages prepare,train,align,evaluate).")
    rows = dataset["train"]
    if align.limit:
        rows = rows.select(range(min(align.limit, len(rows))))
    glossary = load_glossary()
    if align.rewards.get("term_coverage", 0) > 0:
        with_terms = sum(bool(english_term_spans(s, glossary)) for s in rows["original"])
        if not with_terms:
            raise DataError(f"align.rewards weighs term_coverage, but none of the {len(rows)} training paragraphs "
                            f"holds a glossary term ({len(glossary)} terms in data/glossary.yaml): it would be 0 for "
                            "every answer. Drop it from align.rewards or add the terms to the glossary.")
    pairs = None
    if align.method == "dpo" and align.pairs != "self":
        from ..data import load_preferences

        pairs = load_preferences(align.pairs)
    trackers.check(cfg.training.report_to)
    device = device_lib.as_device(device)
    memory = model_lib.check_memory(plan.memory(cfg, device), enabled=cfg.model.memory_check)
    found = checkpoints(run) if cfg.run.resume == "auto" and _settings(run) == align.model_dump(mode="json") else []
    return AlignReady(align, rows, pairs, glossary, found[-1] if found else None, memory, device)


def _settings(run) -> dict | None:
    """The align section the run's align checkpoints were made with (None: none recorded)."""
    path = run.align_dir / "checkpoints" / "align.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fresh_start(run, align) -> None:
    """No checkpoint to resume from: an earlier alignment's checkpoints, log, pairs and adapter (other settings, or
    resume: never) go, so they are neither resumed nor mixed into this one's, and until this one is saved the run's
    model is the SFT one its params describe; the settings are recorded for a resume."""
    folder = run.align_dir / "checkpoints"
    for stale in (folder, run.aligned_adapter):
        if stale.exists():
            shutil.rmtree(stale)
    for stale in (run.logs / "align_log.csv", run.align_dir / "pairs.jsonl", run.align_dir / "candidates.csv"):
        stale.unlink(missing_ok=True)
    folder.mkdir(parents=True)
    atomic_write_json(folder / "align.json", align.model_dump(mode="json"))


@dataclass
class AlignSession:
    trainer: Any
    lm: Any
    cfg: Any
    run: Any
    recorder: AlignRecorder
    ready: AlignReady
    result: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        return self.ready._repr_html_()


def _args(cls, cfg, run, decisions, **method):
    a = cfg.align
    return cls(
        output_dir=str(run.align_dir / "checkpoints"), max_steps=a.max_steps, learning_rate=a.learning_rate,
        gradient_accumulation_steps=a.gradient_accumulation_steps, beta=a.kl_beta, lr_scheduler_type="linear",
        optim=decisions.optim, fp16=decisions.fp16, bf16=decisions.bf16, use_cpu=decisions.use_cpu,
        logging_steps=a.logging_steps, logging_first_step=True, save_strategy="steps", save_steps=a.save_steps,
        save_total_limit=2, seed=a.seed, data_seed=a.seed, report_to=trackers.trainer_report_to(
            cfg.training.report_to, run), run_name=f"{run.id}-align", project=trackers.PROJECT,
        disable_tqdm=False, **method)


def build(lm, cfg, run, ready: AlignReady, live: bool | None = None) -> AlignSession:
    """The SFT adapter's weights copied into the freshly wrapped model (`model.load`), then the method's trainer:
    GRPO on the training paragraphs with one reward function per component, or DPO on the pairs (sampled from
    the SFT model now when align.pairs is self). TRL keeps a frozen copy of the adapter as the reference."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from ..inference import chats_of
    from . import pairs as pairs_lib

    a = cfg.align
    if ready.resume_from is None:
        _fresh_start(run, a)
    model_lib.load_init_adapter(lm.model, str(run.sft_adapter))
    decisions = lm.decisions or device_lib.decide_for(cfg)
    if a.method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        funcs, weights = trl_functions(a.rewards, ready.glossary)
        rows = ready.rows
        train = Dataset.from_dict({"prompt": chats_of(rows), "original": list(rows["original"]),
                                   "simplified": list(rows["simplified"]), "id": list(rows["id"])})
        args = _args(GRPOConfig, cfg, run, decisions, per_device_train_batch_size=a.per_device_train_batch_size *
                     a.num_generations, num_generations=a.num_generations, max_completion_length=a.max_new_tokens,
                     temperature=a.temperature, reward_weights=weights)
        trainer = GRPOTrainer(model=lm.model, reward_funcs=funcs, args=args, train_dataset=train,
                              processing_class=lm.tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        sampled = run.align_dir / "pairs.jsonl"
        if ready.pairs is not None:
            pairs = ready.pairs
        elif ready.resume_from is not None and sampled.is_file():  # resuming: the pairs the checkpoint trained on
            from ..data import load_preferences

            pairs = load_preferences(sampled)
        else:
            pairs = pairs_lib.self_pairs(lm, ready.rows, a, ready.glossary, run.align_dir,
                                         a.pairs_batch_size or cfg.evaluation.batch_size,
                                         on_batch=progress.generation_to(run.logs, "align", "sampling pairs"))
        train = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        args = _args(DPOConfig, cfg, run, decisions, per_device_train_batch_size=a.per_device_train_batch_size,
                     max_length=cfg.model.max_seq_length)
        trainer = DPOTrainer(model=lm.model, args=args, train_dataset=train, processing_class=lm.tokenizer)
    step = int(ready.resume_from.name.split("-")[-1]) if ready.resume_from else 0
    recorder = AlignRecorder(run.logs / "align_log.csv", list(a.rewards) if a.method == "grpo" else [],
                             a.max_steps, live=in_notebook() if live is None else live, keep_until_step=step)

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                recorder.on_log(state.global_step, logs)

    trainer.add_callback(Record())
    if "tensorboard" in cfg.training.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trainer.add_callback(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.logs / "tensorboard_align"))))
    run.update_manifest(align={"method": a.method, "beta": a.kl_beta, "rewards": dict(a.rewards),
                               "pairs": a.pairs if a.method == "dpo" else None, "status": "built",
                               "pairs_count": len(train) if a.method == "dpo" else None})
    return AlignSession(trainer, lm, cfg, run, recorder, ready)


def fit(session: AlignSession):
    """Train (resuming from the latest align checkpoint when there is one); the first and last figures of
    every logged column (reward components, KL, length) as a table."""
    run, trainer = session.run, session.trainer
    start = time.perf_counter()
    resume = session.ready.resume_from
    run.update_manifest(align={"status": "running", "resume_from": str(resume or "")})
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except device_lib.out_of_memory_errors() as e:
        a = session.cfg.align
        raise RunError(f"out of memory in the align stage ({type(e).__name__}): fewer answers per paragraph "
                       f"(--set align.num_generations={max(2, a.num_generations // 2)}), shorter answers "
                       f"(--set align.max_new_tokens={max(16, a.max_new_tokens // 2)}), or a smaller "
                       f"align.per_device_train_batch_size; then run the align stage again: it resumes.") from None
    log = session.recorder.frame()
    session.result = {"method": session.cfg.align.method, "steps": trainer.state.global_step,
                      "seconds": round(time.perf_counter() - start, 1),
                      "resumed_from": resume.name if resume else None, "figures": first_last(log)}
    run.update_manifest(align={"status": "finished", **session.result})
    rows = [{"figure": k, **v} for k, v in session.result["figures"].items()]
    return readable(pd.DataFrame(rows, columns=["figure", "first", "last"]).set_index("figure"))


def finish(session: AlignSession):
    """Save the aligned adapter (adapter_aligned/: the run's model from now on; adapter/ keeps the SFT one) and
    plots/align.png."""
    run, lm = session.run, session.lm
    lm.model.save_pretrained(str(run.aligned_adapter), selected_adapters=["default"])
    lm.tokenizer.save_pretrained(str(run.aligned_adapter))
    saved = {"aligned_adapter": str(run.aligned_adapter),
             "align_plot": str(plots.save(plots.align_curve(session.recorder.frame(), title=f"align {run.id}"),
                                          run.plots / "align.png"))}
    run.update_manifest(artifacts=saved)
    run.update_summary(align=session.result)
    return readable(pd.DataFrame([saved]).T.rename(columns={0: "path"}))
