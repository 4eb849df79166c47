"""GGUF through llama.cpp's converter: installing it (pinned, from PyPI), converting a merged
folder, reading a GGUF file's metadata, and an Ollama Modelfile for the run's chat template.

Unsloth's own GGUF path clones llama.cpp from GitHub; offline we take convert_hf_to_gguf.py and
its gguf-py from the llama-cpp-python sdist on PyPI (pinned below), unpacked once into the model
cache by `make export-tools`. Nothing is compiled: f16 and q8_0 are written by the converter's
Python code.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from .. import inference, paths, prompts
from ..atomic import atomic_replace_dir
from ..errors import ModelError

log = logging.getLogger(__name__)

# The converter writes these without llama.cpp's compiled quantize tool; q4_k etc. need it.
GGUF_TYPES = ("f16", "bf16", "q8_0")
DEFAULT_GGUF_TYPES = ("f16", "q8_0")

# llama-cpp-python's sdist vendors llama.cpp; its convert_hf_to_gguf.py turned SmolLM2 into GGUF here.
CONVERTER_PACKAGE = "llama-cpp-python"
CONVERTER_VERSION = "0.3.36"
# What we keep of the 77 MB sdist (about 10 MB): the converter, its model modules and gguf-py; and
# Llama 3's BPE vocabulary (GGUF) and Llama-3.2's chat template, from which the device check builds
# a Llama-3.2-3B tokenizer offline (benchmarks/device/shapes.py).
LLAMA3_VOCAB = "models/ggml-vocab-llama-bpe.gguf"
LLAMA32_TEMPLATE = "models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"
CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE", LLAMA3_VOCAB, LLAMA32_TEMPLATE)


# ---------------------------------------------------------------- converter (GGUF)

def converter_dir() -> Path:
    return paths.model_cache_dir() / f"llama-cpp-convert-{CONVERTER_VERSION}"


def find_converter() -> Path:
    """The unpacked convert_hf_to_gguf.py, or a clear error saying how to get it."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not (script.is_file() and (converter_dir() / "gguf-py" / "gguf").is_dir()):
        raise ModelError(f"GGUF export needs llama.cpp's converter in {converter_dir()}, which is missing. "
                         f"Run `make export-tools` (downloads the {CONVERTER_PACKAGE}=={CONVERTER_VERSION} "
                         "sdist from PyPI once and unpacks its converter; nothing is compiled).")
    return script


def install_converter(force: bool = False) -> Path:
    """Download the pinned llama-cpp-python sdist with pip and unpack only the converter.

    Atomic: the converter folder appears whole or not at all.
    """
    target = converter_dir()
    if not force and all((target / m).exists() for m in CONVERTER_MEMBERS if m != "LICENSE"):
        return target
    with tempfile.TemporaryDirectory(prefix="polo-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}", "-d", tmp]
        log.info("downloading %s==%s (sdist, ~77 MB)", CONVERTER_PACKAGE, CONVERTER_VERSION)
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            raise ModelError(f"could not download the {CONVERTER_PACKAGE}=={CONVERTER_VERSION} sdist from "
                             f"the package index: {done.stderr.strip()[-800:]}")
        prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"

        def unpack(out: Path) -> None:
            with tarfile.open(sdists[0]) as tar:
                members = []
                for m in tar.getmembers():
                    rel = m.name.removeprefix(prefix)
                    if m.name.startswith(prefix) and (m.isfile() or m.isdir()) and any(
                            rel == k or (k.endswith("/") and rel.startswith(k)) for k in CONVERTER_MEMBERS):
                        m.name = rel
                        members.append(m)
                tar.extractall(out, members=members, filter="data")
            if not (out / "convert_hf_to_gguf.py").is_file():
                raise ModelError(f"{sdists[0].name} has no vendor/llama.cpp/convert_hf_to_gguf.py")

        atomic_replace_dir(target, unpack)
    return target


def convert_to_gguf(hf_dir: Path, out_file: Path, outtype: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on an HF folder, with its own gguf-py (newer than PyPI's)."""
    script = find_converter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(script.parent / "gguf-py"), str(script.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(out_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_file.is_file():
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        hint = (" llama.cpp does not know this tokenizer's pre-tokenizer (a custom tokenizer such as the "
                "tiny test model's); GGUF export works for the models it knows (SmolLM2, Llama 3.2)."
                if "pre-tokenizer was not recognized" in done.stderr else "")
        raise ModelError(f"convert_hf_to_gguf.py --outtype {outtype} failed: {tail}.{hint}")
    return out_file


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF fields that decide prompts and stopping: chat template, eos id, architecture.

    Read with transformers' header reader, which leaves the vocabulary's string arrays undecoded:
    gguf-py's GGUFReader builds every field, the tokenizer's tokens and merges included, seconds of
    Python per file for these few fields (2-5 s for SmolLM2's 49,152 tokens; this: 0.02 s)."""
    from transformers.integrations.gguf import read_gguf_metadata

    fields, tensors = read_gguf_metadata(str(path))
    return {"architecture": fields.get("general.architecture"), "chat_template": fields.get("tokenizer.chat_template"),
            "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"), "file_type": fields.get("general.file_type"),
            "tensors": len(tensors)}


def ollama_modelfile(tokenizer, gguf_name: str) -> str:
    """An Ollama Modelfile for a GGUF file: the run's chat template rendered with the tokenizer
    itself (system and user turns as {{ .System }} and {{ .Prompt }}), the Easy system prompt as
    the default system, and a stop line for the EOS and for the token that opens a new turn."""
    from ..train import derive_markers

    system, user = "QQQ_MODELFILE_SYSTEM", "QQQ_MODELFILE_PROMPT"
    rendered = inference.prompt_text(tokenizer, [{"role": "system", "content": system},
                                                  {"role": "user", "content": user}])
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos and rendered.startswith(tokenizer.bos_token):  # llama.cpp adds that BOS itself, as the tokenizer does
        rendered = rendered[len(tokenizer.bos_token):]
    template = rendered.replace(system, "{{ .System }}").replace(user, "{{ .Prompt }}")
    stops = [tokenizer.eos_token]
    opener = derive_markers(tokenizer).instruction
    stops += [t for t in tokenizer.all_special_tokens if t and t in opener and t not in stops][:1]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', f'SYSTEM """{prompts.SYSTEM_PROMPT}"""']
    lines += [f'PARAMETER stop "{t}"' for t in stops] + ["PARAMETER temperature 0", ""]
    return "\n".join(lines)


# What a GGUF type does to the merged 16-bit weights, read back through transformers.
GGUF_SAME_ARITHMETIC = {"f16": "f16 holds the merged bf16 weights exactly (but for weights under 6e-5 in size)",
                        "bf16": "the same bf16 weights"}
GGUF_ROUNDING = {"q8_0": "8-bit blocks of 32 weights, one scale each: rounded"}
