"""Load the base model through Unsloth, apply LoRA, count parameters, estimate memory."""
from __future__ import annotations

import os

from . import local_models, paths


def import_unsloth():
    """Import Unsloth before transformers/trl/peft (it patches them on import) and keep its
    generated kernels in the model cache instead of `unsloth_compiled_cache/` in the cwd."""
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(paths.unsloth_compile_dir()))
    import unsloth  # noqa: F401

    return unsloth


def load_tokenizer(model_params):
    """The model's own tokenizer (and chat template), without loading the weights."""
    import_unsloth()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_models.resolve(model_params.model_name))
