"""Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: every path that may load or build a model calls import_unsloth() first (model.py, the
local model builds, the notebooks' first cell through model.import_unsloth)."""
from __future__ import annotations

import logging
import os

from . import paths


def import_unsloth():
    """Import Unsloth before transformers/trl/peft (it patches them on import) and keep its
    generated kernels in the model cache instead of `unsloth_compiled_cache/` in the cwd."""
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(paths.unsloth_compile_dir()))
    # bitsandbytes' CPU backend (imported by Unsloth) warns at import that the `kernels` package is
    # missing: that package downloads a faster gemm from the hub at run time (never possible offline),
    # and the kernel serves only the packed inference layout, which Unsloth's CPU loader turns off so
    # that backward stays right. Nothing for the user to do: said in the README, not at every start.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import unsloth  # noqa: F401

    return unsloth
