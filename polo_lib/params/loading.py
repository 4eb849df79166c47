"""A params file < overrides (dotted keys, aliases, unique field names), validated with every problem at once."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import paths
from ..errors import ParamsError, bullet_list
from .schema import SECTIONS, TOP_LEVEL, Params

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


# Sections whose fields are always named in full (align.learning_rate): their names repeat training's, and a
# short `learning_rate` keeps meaning training's
FULL_NAMES_ONLY = ("align",)


def _leaf_paths() -> dict[str, str]:
    """Unique leaf name -> dotted path, e.g. learning_rate -> training.learning_rate."""
    seen: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        if section in FULL_NAMES_ONLY:
            continue
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
    from ..device import AUTO_PARAMS, auto_params_name

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
    from ..atomic import atomic_write_text
    return atomic_write_text(Path(path), cfg.to_yaml())
