"""Where things live, and how a path is shown and a YAML file read. Every path is derived from
the package's own location, never the cwd, so the same code works from the repo root,
notebooks/, papermill --cwd or a Colab clone.

Environment overrides (used by tests and by users with a scratch disk):
  POLO_OUTPUTS        outputs folder (default <repo>/outputs)
  POLO_MODEL_CACHE    converted/built local models (default <outputs>/models)
  POLO_PROCESSED_DIR  processed datasets (default <repo>/data/processed)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROJ_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJ_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PARAMS_DIR = PROJ_ROOT / "params"
QUEUES_DIR = PARAMS_DIR / "queues"    # `polo queue FILE`: variants or a chained pipeline
SWEEPS_DIR = PARAMS_DIR / "sweeps"    # `polo sweep FILE`: a search space and its objective
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def outputs_dir() -> Path:
    return _env_path("POLO_OUTPUTS", PROJ_ROOT / "outputs")


def runs_dir() -> Path:
    return outputs_dir() / "runs"


def model_cache_dir() -> Path:
    return _env_path("POLO_MODEL_CACHE", outputs_dir() / "models")


def processed_dir() -> Path:
    return _env_path("POLO_PROCESSED_DIR", DATA_DIR / "processed")


def resolve_project_path(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one is relative to the repo root, not the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJ_ROOT / p


def display(path: str | os.PathLike) -> str:
    """A path as messages show it: relative to the repo root when it is inside it, else as given."""
    try:
        return str(Path(path).relative_to(PROJ_ROOT))
    except ValueError:
        return str(path)


def read_yaml(path: Path, error: type[Exception], shown: str | None = None) -> Any:
    """A YAML file's parsed content; `error` (ParamsError, DataError...) naming the file as `shown`
    (default: the path) when it is not valid YAML or not UTF-8."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{shown or path}: not valid YAML ({e}). Fix the syntax.") from None


def find_yaml(ref: str | os.PathLike, folder: Path, what: str) -> Path:
    """A YAML file by name in `folder` ('cpu_lr'), by file name, or by path (from the cwd or the
    repo root). Not found: FileNotFoundError naming the names `folder` holds, the closest first."""
    import difflib

    p = Path(ref).expanduser()
    for c in (p, resolve_project_path(p), folder / f"{ref}.yaml", folder / str(ref)):
        if c.is_file():
            return c.resolve()
    names = sorted(f.stem for f in folder.glob("*.yaml")) if folder.is_dir() else []
    match = difflib.get_close_matches(str(ref), names, n=1)
    where = folder.relative_to(PROJ_ROOT) if folder.is_relative_to(PROJ_ROOT) else folder
    raise FileNotFoundError(f"{what} '{ref}' not found." + (f" Did you mean '{match[0]}'?" if match else "")
                            + f" Use a name in {where}/ ({', '.join(names) or 'none'}) or a path to a .yaml file.")


def unsloth_compile_dir() -> Path:
    """Unsloth writes generated kernels to the cwd unless told otherwise; keep them in the cache."""
    return model_cache_dir() / "unsloth_compiled_cache"
