"""The params schema: one frozen pydantic model per section, and the whole experiment (Params)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import registry

DEFAULT_FILLERS = ["In simple terms, ", "쉽게 말해서, ", "간단히 말하면, ", "다시 말해서, "]


STEP_SCHEDULES = ("auto", "epoch")  # eval_steps / save_steps besides a number


def _stopping_metric(value: str) -> str:
    choices = registry.early_stopping_choices()
    if value not in choices:
        raise ValueError(f"must be eval_loss or a metric scored during training: one of {', '.join(choices)}")
    return value


# eval_loss, or a task metric scored at each evaluation (registry.METRICS with during_training): checked
# against the registry when validated, so a metric registered at run time counts too.
StoppingMetric = Annotated[str, AfterValidator(_stopping_metric), Field(
    json_schema_extra=lambda schema: schema.update(enum=list(registry.early_stopping_choices())))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Document(_Section):
    """A validated YAML document (a params file, a sweep file): plain data and a content hash."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def short_hash(self, ignore: tuple[str, ...] = ("name", "source", "chosen_by", "overridden")) -> str:  # = META
        """8 hex digits of the content, the fields about the file (`ignore`) left out: the same
        experiment gets the same hash whatever its file is called."""
        # a section left out (None: align) adds nothing, so adding a section keeps every older file's hash
        body = {k: v for k, v in self.to_dict().items() if k not in ignore and v is not None}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


class ModelParams(_Section):
    model_name: str = Field(min_length=1)  # a local name (polo_lib.local_models), a path or a hub id
    # A GPU recipe: on a machine without CUDA, stop before loading (and say which params to use)
    # instead of training a 3B model in fp32 on the CPU for days.
    require_gpu: bool = False
    max_seq_length: int = Field(1024, ge=16, le=131072)
    load_in_4bit: bool = True
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Refuse to load when the memory estimate is clearly over what the device has free.
    memory_check: bool = True


class LoraParams(_Section):
    r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    # "unsloth" offloads activations on GPU (~30% less VRAM); CPU runs use plain recomputation or none.
    use_gradient_checkpointing: Literal["unsloth", "true", "false"] = "unsloth"

    @model_validator(mode="after")
    def _modules_not_empty(self):
        if not self.target_modules:
            raise ValueError("target_modules: must name at least one module, e.g. [q_proj, v_proj]")
        return self


class TrainingParams(_Section):
    num_train_epochs: float = Field(5, gt=0, le=1000)
    max_steps: int = Field(-1, ge=-1)  # > 0 overrides num_train_epochs (TRL semantics)
    per_device_train_batch_size: int = Field(1, ge=1, le=4096)
    per_device_eval_batch_size: int = Field(1, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(4, ge=1, le=4096)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    warmup_steps: float = Field(0.0, ge=0)  # >= 1 steps, < 1 a fraction of all steps (train.resolve_warmup)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.01, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "auto"  # auto: adamw_8bit on a GPU, adamw_torch_fused on CPU (what Unsloth runs there)
    logging_steps: int = Field(1, ge=1)
    # A number of steps, "epoch" (once per epoch) or "auto" (~10 evaluations, at least one per
    # epoch): resolved from the prepared data's size by train.plan, shown before training.
    eval_steps: int | str = "auto"
    save_steps: int | str = "auto"
    save_total_limit: int = Field(3, ge=1)
    early_stopping_patience: int = Field(3, ge=0)  # evaluations without improvement; 0: off
    early_stopping_threshold: float = Field(0.001, ge=0)  # absolute improvement of early_stopping_metric
    # What early stopping and the best checkpoint follow: eval_loss, or a task metric scored at
    # each evaluation (evaluation.during_training must be on); its direction is the metric's own.
    early_stopping_metric: StoppingMetric = "eval_loss"
    # Experiment trackers the trainer logs to, besides the run folder: offline by default
    # (MLflow: a SQLite store in outputs/mlflow; W&B: offline mode; Trackio: its local store).
    report_to: tuple[Literal[tuple(registry.TRACKERS)], ...] = ("tensorboard",)
    seed: int = Field(3407, ge=0)
    save_merged_16bit: bool = False

    @field_validator("eval_steps", "save_steps", mode="before")
    @classmethod
    def _steps_or_schedule(cls, value):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not (value in STEP_SCHEDULES or (isinstance(value, int) and value >= 1)):
            raise ValueError("must be a number of steps (1 or more), 'epoch' (once per epoch) or 'auto' "
                             "(about ten evaluations, at least one per epoch)")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, str):  # --set training.report_to=mlflow, or "tensorboard,mlflow"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and len(set(value)) != len(value):
            raise ValueError(f"names a tracker twice: {list(value)}")
        return value

    @model_validator(mode="after")
    def _early_stopping_needs_aligned_saves(self):
        # EarlyStoppingCallback + load_best_model_at_end need a checkpoint at every evaluation.
        if self.early_stopping_patience and self.save_steps != self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must equal eval_steps ({self.eval_steps}) when "
                "early_stopping_patience is set: the best model is reloaded from the checkpoint "
                "saved at an evaluation. Set both to the same value.")
        return self


class DataParams(_Section):
    # paper: records {id, section_major, section_minor, original, simplified}, one JSON file per
    # paper (a list of files trains on several papers; each keeps its name in the splits);
    # messages: chat JSONL ({"messages": [system?, user, assistant]}); alpaca: JSON or JSONL
    # records {instruction, input, output}.
    format: Literal[tuple(registry.DATA_FORMATS)] = "paper"
    raw_file: str | tuple[str, ...] = "data/raw/yolo_v1.json"  # relative to the repo root; one or a list
    processed_name: str = Field("yolo_v1", pattern=r"^[A-Za-z0-9._-]+$")
    filler_phrases: tuple[str, ...] = tuple(DEFAULT_FILLERS)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = Field(3407, ge=0)
    # Examples longer than max_seq_length: TRL would truncate them silently. fail or drop, never cut.
    over_length: Literal["fail", "drop"] = "fail"

    @field_validator("raw_file", mode="before")
    @classmethod
    def _one_or_many_files(cls, value):
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            if not value:
                raise ValueError("names no file: give one path or a list of paths")
            if len(value) == 1:
                return value[0]
            stems = [Path(str(v)).stem for v in value]
            twice = sorted({s for s in stems if stems.count(s) > 1})
            if twice:
                raise ValueError(f"two files share the name {', '.join(twice)}: each file is a paper and "
                                 "its name (the file name without .json) must be unique")
        return value

    @property
    def raw_files(self) -> tuple[str, ...]:
        return self.raw_file if isinstance(self.raw_file, tuple) else (self.raw_file,)


class EvaluationParams(_Section):
    split: Literal["validation", "test", "train"] = "test"
    limit: int | None = Field(None, ge=1)  # None: every example of the split
    max_new_tokens: int = Field(256, ge=1, le=8192)
    batch_size: int = Field(8, ge=1, le=1024)
    do_sample: bool = False  # greedy by default: comparable across runs
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    # Task metrics during training: this many validation examples (the first ones, in turn from each
    # paper, the same at every evaluation) are answered greedily and scored (chrF, SARI, glossary coverage, Hangul
    # share) at each evaluation, next to eval_loss. 0: off.
    during_training: int = Field(0, ge=0, le=64)
    during_training_max_new_tokens: int = Field(96, ge=1, le=2048)
    # Uncertainty of every base-vs-tuned figure (polo_lib/stats.py): bootstrap resamples of the examples,
    # the intervals' confidence, and the seed that makes them repeatable.
    bootstrap_resamples: int = Field(10_000, ge=1_000, le=1_000_000)
    confidence: float = Field(0.95, ge=0.5, lt=1)
    stats_seed: int = Field(0, ge=0)


def _reward_weights(value: dict[str, float]) -> dict[str, float]:
    unknown = [k for k in value if k not in registry.reward_choices()]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}: choose from {', '.join(registry.reward_choices())}")
    if not any(w > 0 for w in value.values()):
        raise ValueError("needs at least one reward with a weight above 0, e.g. {chrf: 1.0, length: 0.5}")
    return value


class AlignParams(_Section):
    """The align stage after train (polo_lib/align): the SFT adapter trained further on the task's own rewards.

    grpo: answers sampled from the model for each training paragraph, scored by the weighted rewards, and the
    better ones made likelier (TRL's GRPOTrainer); dpo: preference pairs (`pairs`) and TRL's DPOTrainer. Both keep
    the model near the SFT model it starts from (beta: the KL weight)."""
    method: Literal["grpo", "dpo"] = "grpo"
    max_steps: int = Field(20, ge=1, le=100_000)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    # KL to the SFT model: GRPO's penalty weight, DPO's temperature; None: the method's usual (grpo 0.04, dpo 0.1)
    beta: float | None = Field(None, ge=0, le=10)
    # paragraphs a step (GRPO: x num_generations answers; DPO: pairs): 1 keeps the 3B recipe on a T4 (polo plan)
    per_device_train_batch_size: int = Field(1, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    # {reward: weight}: registered metrics usable as rewards (chrf, sari, term_coverage, hangul_share, ...) and the
    # terms repetition and length (registry.reward_choices); each is logged on its own at every step
    rewards: Annotated[dict[str, float], AfterValidator(_reward_weights)] = Field(
        default_factory=lambda: dict(registry.DEFAULT_REWARDS))
    num_generations: int = Field(4, ge=2, le=64)  # answers per paragraph: GRPO's group, or self pairs' candidates
    max_new_tokens: int = Field(256, ge=1, le=8192)  # each answer's length limit
    temperature: float = Field(1.0, gt=0, le=5)  # sampling the answers
    # dpo: "self" (num_generations answers per training paragraph from the SFT model, best against worst by the
    # weighted rewards) or a file in TRL's preference format (prompt / chosen / rejected JSONL; polo rate
    # --export-pairs writes one from human ratings)
    pairs: str = "self"
    pair_margin: float = Field(0.05, ge=0)  # self pairs: the best answer's weighted reward over the worst's, at least
    # self pairs: answers sampled at once (left-padded batches, halved when memory runs out); None: the evaluation's
    # batch_size. On 2 cores 24 at once sample ~2x faster than 4 (benchmarks/results/2026-12-07-align-cpu.md)
    pairs_batch_size: int | None = Field(None, ge=1, le=1024)
    limit: int | None = Field(None, ge=1)  # training paragraphs used (the first ones); None: all
    save_steps: int = Field(10, ge=1)  # a checkpoint every so many steps (resume after a crash)
    logging_steps: int = Field(1, ge=1)
    seed: int = Field(3407, ge=0)

    @property
    def kl_beta(self) -> float:
        return self.beta if self.beta is not None else (0.04 if self.method == "grpo" else 0.1)


class ChecksParams(_Section):
    """The data checks prepare runs before writing anything (polo_lib/data/checks.py); every problem at once.
    Left out of a params file, these defaults apply (and the file's hash stays what it was)."""
    # near-duplicate paragraphs (English text, case and punctuation ignored) at least this alike, 0-1; None: off
    near_duplicate: float | None = Field(0.9, gt=0, le=1)
    # a validation/test paragraph sharing more than this share of its leakage_ngram-word n-grams with the training
    # paragraphs leaks; None: off
    leakage: float | None = Field(0.5, gt=0, le=1)
    leakage_ngram: int = Field(8, ge=2, le=64)
    # quality flags of paper-format paragraphs (the references sit at 0.68+ Hangul, 0.50-1.23 of the source's
    # length); more flagged paragraphs than max_flagged_share of them stop prepare, naming them
    min_hangul_share: float = Field(0.5, ge=0, le=1)
    min_length_ratio: float = Field(0.2, ge=0)
    max_length_ratio: float = Field(3.0, gt=0)
    min_term_coverage: float = Field(0.5, ge=0, le=1)  # of the source's glossary terms, kept in the Korean
    max_flagged_share: float = Field(0.1, ge=0, le=1)
    # a teacher's drafts (polo draft) nobody reviewed: refused by prepare unless true (then trained on as drafted)
    include_drafts: bool = False


class RunParams(_Section):
    # auto: continue run_id from its latest checkpoint; never: start fresh; or a checkpoint path.
    resume: str = "auto"
    init_adapter: str | None = None  # a run id or adapter path to start training from


class Params(Document):
    """The whole experiment. `name` is the params file's stem, `source` its path."""

    name: str = "custom"
    source: str | None = None
    chosen_by: str | None = None  # params_file "auto": why this file was taken on this machine
    # Dotted keys set on top of the file (notebook parameters, --set, a queue's or sweep's values):
    # train.plan lets the file's schedule give way to a run length the user chose, never to values
    # the user set. Kept in the run's params.yaml, so each stage that reads it back decides alike.
    overridden: tuple[str, ...] = ()
    model: ModelParams
    lora: LoraParams = LoraParams()
    training: TrainingParams = TrainingParams()
    data: DataParams = DataParams()
    evaluation: EvaluationParams = EvaluationParams()
    run: RunParams = RunParams()
    align: AlignParams | None = None  # the align stage's section; a params file without it does not align
    checks: ChecksParams | None = None  # prepare's data checks; None: ChecksParams' defaults

    @model_validator(mode="after")
    def _task_metric_needs_scoring(self):
        metric = self.training.early_stopping_metric
        if metric != "eval_loss" and not self.evaluation.during_training:
            raise ValueError(f"training.early_stopping_metric is '{metric}', a task metric, but "
                             "evaluation.during_training is 0, so it is never scored: set "
                             "evaluation.during_training to the number of validation examples to score "
                             "(e.g. 3), or early_stopping_metric: eval_loss")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def table(self):
        """The resolved params as a pandas table (section, key, value) for a notebook to show."""
        import pandas as pd

        rows = [{"section": s, "key": k, "value": v} for s, body in self.to_dict().items()
                if isinstance(body, dict) for k, v in body.items()]
        return pd.DataFrame(rows).set_index(["section", "key"])


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelParams, "lora": LoraParams, "training": TrainingParams,
    "data": DataParams, "evaluation": EvaluationParams, "run": RunParams, "align": AlignParams,
    "checks": ChecksParams,
}
META = ("name", "source", "chosen_by", "overridden")  # about the file, not the experiment: outside the hash
TOP_LEVEL = (*META, *SECTIONS)
