"""Where things live. Every path is derived from the package's own location, never the cwd,
so the same code works from the repo root, notebooks/, papermill --cwd or a Colab clone.

Environment overrides (used by tests and by users with a scratch disk):
  POLO_OUTPUTS        outputs folder (default <repo>/outputs)
  POLO_MODEL_CACHE    converted/built local models (default <outputs>/models)
  POLO_PROCESSED_DIR  processed datasets (default <repo>/data/processed)
"""
from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJ_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PARAMS_DIR = PROJ_ROOT / "params"
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


def unsloth_compile_dir() -> Path:
    """Unsloth writes generated kernels to the cwd unless told otherwise; keep them in the cache."""
    return model_cache_dir() / "unsloth_compiled_cache"
