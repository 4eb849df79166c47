"""Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: every path that may load or build a model calls import_unsloth() first (model.py, the
local model builds, the notebooks' first cell through model.import_unsloth)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

from . import paths

# What Unsloth's CPU backend prints at import (unsloth/_cpu_init.py): true where a model trains, noise
# where one only answers (polo chat, explain, serve, export), where nothing trains.
CPU_BANNER = "no GPU found, training on CPU"


@contextlib.contextmanager
def without_lines(*parts: str) -> Iterator[None]:
    """Everything the block prints to stdout, less the lines holding one of `parts`: a library's
    message that says nothing to this user. The rest is printed when the block ends (or raises)."""
    caught = io.StringIO()
    try:
        with contextlib.redirect_stdout(caught):
            yield
    finally:
        kept = [line for line in caught.getvalue().splitlines(keepends=True) if not any(p in line for p in parts)]
        if kept:
            sys.stdout.write("".join(kept))
            sys.stdout.flush()


def import_unsloth(training: bool = True):
    """Import Unsloth before transformers/trl/peft (it patches them on import) and keep its
    generated kernels in the model cache instead of `unsloth_compiled_cache/` in the cwd.

    `training=False` (a command that only loads a model to answer): without the CPU backend's
    "no GPU found, training on CPU" banner. Only the first import prints anything."""
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(paths.unsloth_compile_dir()))
    # bitsandbytes' CPU backend (imported by Unsloth) warns at import that the `kernels` package is
    # missing: that package downloads a faster gemm from the hub at run time (never possible offline),
    # and the kernel serves only the packed inference layout, which Unsloth's CPU loader turns off so
    # that backward stays right. Nothing for the user to do: said in the README, not at every start.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    with contextlib.nullcontext() if training else without_lines(CPU_BANNER):
        import unsloth  # noqa: F401

    return unsloth
