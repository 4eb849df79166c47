"""Typed, frozen experiment params: a params file < overrides, validated before anything loads.

Field names follow the upstream APIs (Unsloth `from_pretrained`, PEFT `LoraConfig`,
TRL `SFTConfig`), so their documentation explains ours. A params file is the experiment:

    cfg = params.load("cpu", epochs=2)                 # params/cpu.yaml, then overrides
    cfg = params.load("params/cpu.yaml", overrides={"training.learning_rate": 1e-4})

Every unknown key, wrong type and out-of-range value is reported at once, naming the
file, the key, the value, what is allowed, and the closest valid key for a typo.
The names below are the package's: `from polo_lib import params; params.load(...)`.

  schema    one frozen pydantic model per section (ModelParams ... RunParams) and Params, SECTIONS
  loading   a params file < overrides (ALIASES, dotted keys), validated; resolved params saved and read
  cells     a notebook's parameters cell resolved into Params (from_notebook)
"""
from .cells import NOTEBOOK_NAMES, PAPERMILL_INJECTED, assigned_names, from_notebook, parameter_names  # noqa: F401
from .loading import (  # noqa: F401
    ALIASES,
    AUTO,
    all_keys,
    auto_choice,
    from_dict,
    load,
    load_resolved,
    normalize_overrides,
    resolve_file,
    save,
    validation_problems,
)
from .schema import (  # noqa: F401
    DEFAULT_FILLERS,
    META,
    SECTIONS,
    STEP_SCHEDULES,
    TOP_LEVEL,
    AlignParams,
    ChecksParams,
    DataParams,
    Document,
    EvaluationParams,
    LoraParams,
    ModelParams,
    Params,
    RunParams,
    StoppingMetric,
    TrainingParams,
)
