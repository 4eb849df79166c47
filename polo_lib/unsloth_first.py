"""Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: every path that may load or build a model calls import_unsloth() first (model.py, the
local model builds, the notebooks' first cell through model.import_unsloth)."""
from __future__ import annotations

import os

from . import paths


def import_unsloth():
    """Import Unsloth before transformers/trl/peft (it patches them on import) and keep its
    generated kernels in the model cache instead of `unsloth_compiled_cache/` in the cwd."""
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(paths.unsloth_compile_dir()))
    import unsloth  # noqa: F401

    return unsloth
