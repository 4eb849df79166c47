"""Typed, frozen experiment params: a params file < overrides, validated before anything loads.

Field names follow the upstream APIs (Unsloth `from_pretrained`, PEFT `LoraConfig`,
TRL `SFTConfig`), so their documentation explains ours. A params file is the experiment:

    cfg = params.load("cpu", epochs=2)                 # params/cpu.yaml, then overrides
    cfg = params.load("params/cpu.yaml", overrides={"training.learning_rate": 1e-4})

Every unknown key, wrong type and out-of-range value is reported at once, naming the
file, the key, the value, what is allowed, and the closest valid key for a typo.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import paths, registry
from .errors import ParamsError, bullet_list

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
        body = {k: v for k, v in self.to_dict().items() if k not in ignore}
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
    "data": DataParams, "evaluation": EvaluationParams, "run": RunParams,
}
META = ("name", "source", "chosen_by", "overridden")  # about the file, not the experiment: outside the hash
TOP_LEVEL = (*META, *SECTIONS)
AUTO = "auto"  # params_file: 'default' where a CUDA GPU is present, 'cpu' elsewhere

# Short names a notebook or `polo run --set` may use for the knobs users reach for most.
# Every leaf field name that is unique across sections works too (learning_rate, lora_alpha...).
ALIASES = {
    "epochs": "training.num_train_epochs",
    "lora_r": "lora.r",
    "split": "evaluation.split",
    "limit": "evaluation.limit",
    "eval_batch_size": "evaluation.batch_size",
}


def _leaf_paths() -> dict[str, str]:
    """Unique leaf name -> dotted path, e.g. learning_rate -> training.learning_rate."""
    seen: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for field in cls.model_fields:
            seen.setdefault(field, []).append(f"{section}.{field}")
    return {name: where[0] for name, where in seen.items() if len(where) == 1}


def all_keys() -> list[str]:
    """Every dotted key a params file or override may set."""
    return [f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.model_fields]


def _suggest(key: str, candidates: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for probe in (key, leaf):
        match = difflib.get_close_matches(probe, candidates, n=1, cutoff=0.6)
        if match:
            return f" Did you mean '{match[0]}'?"
    return ""


def _split_unknown(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(data without unknown keys, a problem per unknown key): validation still runs on the
    rest, so a file with a typo and a bad value reports both at once."""
    known, problems = {}, []
    for key, value in data.items():
        if key not in TOP_LEVEL:
            problems.append(f"unknown key '{key}'.{_suggest(key, list(TOP_LEVEL))}"
                            f" Sections: {', '.join(SECTIONS)}.")
            continue
        if key in SECTIONS and isinstance(value, Mapping):
            fields = list(SECTIONS[key].model_fields)
            for sub in value:
                if sub not in fields:
                    problems.append(f"unknown key '{key}.{sub}'.{_suggest(str(sub), fields)}")
            value = {k: v for k, v in value.items() if k in fields}
        known[key] = value
    return known, problems


def _validate(data: Mapping[str, Any], origin: str, problems: list[str],
              overridden: frozenset[str] = frozenset()) -> Params:
    """Params from a parsed mapping; raises one ParamsError with `problems` and every validation error."""
    known, unknown = _split_unknown(data)
    problems = [*problems, *(f"{origin}: {p}" for p in unknown)]
    try:
        cfg = Params.model_validate(known)
    except ValidationError as e:
        for loc, problem in validation_problems(e):
            problems.append(f"{'override' if loc in overridden else origin}: {problem}")
    if problems:
        raise ParamsError(f"{len(problems)} problem(s) in params:\n{bullet_list(problems)}")
    return cfg


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message naming key, value and what is allowed) per error."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, Mapping) else f" = {value!r}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            problems.append((loc, f"'{loc}' is missing: add it to the file or pass it as an override"))
        else:
            problems.append((loc, f"'{loc}'{shown}: {msg}"))
    return problems


def resolve_file(params_file: str | Path) -> Path:
    """A name in params/ ('cpu'), a file name ('cpu.yaml'), a path, or 'auto' (see `auto_choice`)."""
    if str(params_file) == AUTO:
        params_file = auto_choice()[0]
    p = Path(params_file)
    candidates = [paths.resolve_project_path(p)] if p.suffix in (".yaml", ".yml") else []
    candidates += [paths.PARAMS_DIR / f"{params_file}.yaml", paths.PARAMS_DIR / str(params_file)]
    if p.is_absolute() or len(p.parts) > 1:
        candidates.insert(0, Path.cwd() / p if not p.is_absolute() else p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    available = sorted(f.stem for f in paths.PARAMS_DIR.glob("*.yaml"))
    hint = _suggest(str(params_file), available)
    raise ParamsError(f"params file '{params_file}' not found.{hint} "
                      f"Use a name in params/ ({', '.join(available)}) or a path to a .yaml file.")


def auto_choice() -> tuple[str, str]:
    """(params name, why) for params_file 'auto': the GPU recipe only where CUDA is there."""
    from .device import AUTO_PARAMS, auto_params_name

    name = auto_params_name()
    why = "a CUDA GPU" if name == AUTO_PARAMS["cuda"] else "no CUDA GPU"
    return name, f"params_file 'auto': {why} on this machine, so params/{name}.yaml"


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    section, _, field = dotted.partition(".")
    data.setdefault(section, {})
    if not isinstance(data[section], dict):
        data[section] = {}
    data[section][field] = value


def normalize_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Map short names (epochs, learning_rate) to dotted keys; None means 'from the file'."""
    leaves, out, problems = _leaf_paths(), {}, []
    valid = all_keys()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ALIASES:
            dotted = ALIASES[key]
        elif "." in key:
            dotted = key
        elif key in leaves:
            dotted = leaves[key]
        else:
            hint = _suggest(key, [*ALIASES, *leaves])
            problems.append(f"unknown override '{key}'.{hint}")
            continue
        if dotted not in valid:
            problems.append(f"unknown override '{key}'.{_suggest(dotted, valid)}")
            continue
        out[dotted] = value
    return out, problems


def load(params_file: str | Path, overrides: Mapping[str, Any] | None = None, **shortcuts: Any) -> Params:
    """Load a params file, apply overrides (dotted keys or short names), validate everything.

    `shortcuts` are notebook-style knobs (epochs=5, learning_rate=None...): None means keep the
    file's value. Raises ParamsError listing every problem, naming the file.
    """
    chosen_by = None
    if str(params_file) == AUTO:
        params_file, chosen_by = auto_choice()
    path = resolve_file(params_file)
    data = paths.read_yaml(path, ParamsError, paths.display(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{paths.display(path)}: expected a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(data).__name__}.")
    merged, override_problems = normalize_overrides({**(overrides or {}), **shortcuts})
    for dotted, value in merged.items():
        _set_dotted(data, dotted, value)
    data.setdefault("name", path.stem)
    data["source"] = str(path)
    recorded = data.get("overridden") or ()
    if merged and isinstance(recorded, (list, tuple)):  # a run's params.yaml keeps what its first resolution had
        data["overridden"] = sorted({*recorded, *merged})
    if chosen_by:
        data["chosen_by"] = chosen_by
    return _validate(data, paths.display(path), [f"overrides: {p}" for p in override_problems],
                     frozenset(merged))


def from_dict(data: Mapping[str, Any], origin: str = "params") -> Params:
    """Validate an already-parsed mapping (e.g. a run folder's params.yaml)."""
    return _validate(data, origin, [])


def load_resolved(path: str | Path) -> Params:
    """Read a resolved params.yaml written by `save` (name and source kept as recorded)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file.")
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, origin=paths.display(path))


def save(cfg: Params, path: str | Path) -> Path:
    """Write the resolved params as YAML, atomically; `load_resolved` reads back an equal Params."""
    from .atomic import atomic_write_text
    return atomic_write_text(Path(path), cfg.to_yaml())


# Names a notebook's parameters cell may define that are not params fields.
NOTEBOOK_NAMES = {"params_file", "run_id", "run_ids", "sweep_id", "overrides", "REPO_URL", "OUTPUTS_ON_DRIVE"}
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)  # what papermill can inject
# The first line of the cell papermill injects after the parameters cell (its translator's comment,
# `papermill.translators.PythonTranslator.codify`): `-p epochs 5` arrives as "# Parameters\nepochs = 5\n".
PAPERMILL_INJECTED = "# Parameters"


def assigned_names(source: str) -> list[str]:
    """Names a cell assigns at its top level (`x = 1`, `x: int = 1`, `a, b = 1, 2`), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell that never ran as Python assigned nothing
        return []
    names: list[str] = []

    def add(target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                add(element)

    for node in tree.body:
        for target in node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []:
            add(target)
    return names


def _injected(source: str) -> bool:
    return source.lstrip().startswith(PAPERMILL_INJECTED + "\n")


def parameter_names(history: Sequence[str]) -> set[str] | None:
    """The notebook parameters as the kernel last ran them, from its input history (IPython's `In`):
    the names the parameters cell assigned (the last cell run that sets `params_file`, papermill's
    injected cell aside) and those papermill injected after it (`-p` names, typos included).
    None: no such cell was run in this kernel.

    Not every global: after a first Run All the kernel also holds `dataset`, `lm`, `session`...,
    which are results, not parameters (a second Run All failed on them)."""
    cells = [c for c in history if isinstance(c, str)]
    start = next((i for i in range(len(cells) - 1, -1, -1)
                  if not _injected(cells[i]) and "params_file" in assigned_names(cells[i])), None)
    after = cells[start:] if start is not None else cells
    names = set(assigned_names(cells[start])) if start is not None else set()
    injected = [c for c in after if _injected(c)]
    for cell in injected:
        names |= set(assigned_names(cell))
    return names if start is not None or injected else None


def from_notebook(namespace: Mapping[str, Any], default_file: str | Path | None = None) -> Params:
    """Resolve params from a notebook's globals: `params_file` < the knobs of its parameters cell.

    In a kernel, only the parameters cell's names and papermill's injected ones are parameters
    (`parameter_names`); other globals (a dataset, a model from the run before) are not. papermill
    only warns about an unknown `-p` name and injects it anyway; here an unknown name among the
    parameters is an error, so `-p epoch 5` fails instead of silently training the file's epochs.
    Outside a kernel (no `In` history), every plain value in `namespace` is a parameter.
    """
    from .notebook import show_errors_briefly

    show_errors_briefly()
    knobs, problems = {}, []
    leaves = _leaf_paths()
    declared = parameter_names(namespace["In"]) if isinstance(namespace.get("In"), list) else None
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES or name in NOTEBOOK_NAMES:
            continue
        if declared is not None and name not in declared:  # a result of a later cell, not a parameter
            continue
        if declared is None and not isinstance(value, _PLAIN):  # modules, functions, a Run: not parameters
            continue
        if name in ALIASES or name in leaves:
            knobs[name] = value
        else:
            hint = _suggest(name, sorted({*ALIASES, *leaves, *NOTEBOOK_NAMES}))
            problems.append(f"unknown notebook parameter '{name}' = {value!r}.{hint}")
    if problems:
        raise ParamsError(f"{len(problems)} problem(s) in notebook parameters:\n{bullet_list(problems)}")
    params_file = namespace.get("params_file") or default_file
    if params_file is None:
        raise ParamsError("the notebook's parameters cell must set params_file")
    overrides = namespace.get("overrides") or {}  # dotted keys, passed by `polo run --set`
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"notebook parameter 'overrides' must be a mapping of dotted keys, got {overrides!r}")
    return load(params_file, overrides=overrides, **knobs)
