"""Model "shape" folders (config + tokenizer, no weights) carried to the device, and random
weights built from them there. Throughput and memory depend on the architecture, the sequence
lengths and the precision, not on the values of the weights: a random model with the right
shape trains and generates at the speed, and in the memory, of the real one.

    python -m benchmarks.device.shapes OUT_DIR [--llama-gguf F --llama-template F]   # here
    python -m benchmarks.device.shapes --random SHAPE_DIR MODEL_DIR [--dtype bfloat16] # on the device

Shapes written to OUT_DIR:
  smollm2-135m-instruct/     the local SmolLM2 build's config + tokenizer (polo_lib.local_models)
  llama-3.2-3b-instruct/     Llama-3.2-3B-Instruct: polo_lib.model.KNOWN_CONFIGS plus the fields of
                             its real config.json that change the computation or the special
                             tokens; tokenizer from llama.cpp's Llama 3 BPE vocab (GGUF) and
                             Meta's chat template, eos <|eot_id|>, pad <|finetune_right_pad_id|>
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

LLAMA = "llama-3.2-3b-instruct"
SMOLLM2 = "smollm2-135m-instruct"
LLAMA_BOS, LLAMA_EOS, LLAMA_PAD = 128000, 128009, 128004
LLAMA_EOS_TOKEN, LLAMA_PAD_TOKEN = "<|eot_id|>", "<|finetune_right_pad_id|>"
# Fields of meta-llama/Llama-3.2-3B-Instruct's config.json beyond the architecture numbers
# in KNOWN_CONFIGS: RoPE (llama3 scaling, theta), norm epsilon, special token ids (eos as in
# unsloth's -bnb-4bit copy: <|eot_id|>; pad: the reserved token Unsloth pads with), dtype.
LLAMA_EXTRA: dict[str, Any] = {
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "initializer_range": 0.02, "bos_token_id": LLAMA_BOS, "eos_token_id": LLAMA_EOS,
    "pad_token_id": LLAMA_PAD, "torch_dtype": "bfloat16", "use_cache": True,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def llama_config(overrides: dict[str, Any] | None = None):
    """The 3B config (or a tiny one with `overrides`, for tests) as transformers writes it."""
    from transformers import LlamaConfig

    from polo_lib.model import KNOWN_CONFIGS

    fields = {k: v for k, v in KNOWN_CONFIGS["unsloth/Llama-3.2-3B-Instruct-bnb-4bit"].items() if k != "model_type"}
    fields.update(LLAMA_EXTRA)
    fields.update(overrides or {})
    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    return config


def llama32_special_names() -> dict[int, str]:
    """Names of the reserved ids 128002-128255 in Llama 3.1/3.2 (llama.cpp's vocab GGUF has
    Llama 3.0's, where 128004 is <|reserved_special_token_2|>, not <|finetune_right_pad_id|>)."""
    names = {128002: "<|reserved_special_token_0|>", 128003: "<|reserved_special_token_1|>",
             128004: LLAMA_PAD_TOKEN, 128005: "<|reserved_special_token_2|>", 128008: "<|eom_id|>",
             128010: "<|python_tag|>"}
    names.update({i: f"<|reserved_special_token_{i - 128008}|>" for i in range(128011, 128256)})
    return names


def llama3_tokenizer(gguf_file: Path, template_file: Path):
    """Llama 3's tokenizer from llama.cpp's vocab-only GGUF (the same 128,256 tokens and merges),
    special tokens renamed as in 3.2, with Meta's chat template; eos <|eot_id|> (end of a turn:
    generation stops there, training's labels end there) and a pad token that is not eos, so
    padding is never mistaken for an end."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(gguf_backend(gguf_file).to_str())
    rename = {}
    for token in spec["added_tokens"]:
        new = llama32_special_names().get(token["id"])
        if new:
            rename[token["content"]] = new
            token["content"] = new
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = {rename.get(k, k): v for k, v in vocab.items()}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|begin_of_text|>",
        eos_token=LLAMA_EOS_TOKEN, pad_token=LLAMA_PAD_TOKEN, clean_up_tokenization_spaces=False,
        # padding right for training; polo's generate pads left itself
        model_max_length=131072, padding_side="right", add_bos_token=True, add_eos_token=False)
    tok.chat_template = template_file.read_text(encoding="utf-8")
    return tok


def gguf_backend(gguf_file: Path):
    """The `tokenizers` backend transformers' GGUF converter builds from a llama vocabulary GGUF, read
    with transformers' fast metadata reader: AutoTokenizer.from_pretrained(gguf_file=...) builds the
    same converter output but parses the file twice with gguf-py's reader (25 s for Llama 3's 128,256
    tokens and 280,147 merges on 2 cores; this: 6 s)."""
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    from transformers.integrations.gguf import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_file), ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                       "tokenizer.ggml.token_type"))
    fields = {name: metadata[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
              if f"tokenizer.{key}" in metadata}
    backend, _ = convert_gguf_tokenizer(metadata["general.architecture"], fields)
    return backend


def write_llama_shape(out: Path, gguf_file: Path, template_file: Path,
                      config_overrides: dict[str, Any] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config = llama_config(config_overrides)
    tok = llama3_tokenizer(gguf_file, template_file)
    if len(tok) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens, more than vocab_size {config.vocab_size}")
    config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=LLAMA_BOS, eos_token_id=[128001, 128008, LLAMA_EOS], pad_token_id=LLAMA_PAD,
                     do_sample=False).save_pretrained(str(out))
    gzip_tokenizer(out)
    return out


def write_smollm2_shape(out: Path) -> Path:
    """Config + tokenizer of the local SmolLM2 build (built once into the model cache)."""
    from polo_lib import local_models

    src = Path(local_models.resolve(SMOLLM2))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    gzip_tokenizer(out)
    return out


def gzip_tokenizer(folder: Path) -> None:
    """tokenizer.json -> tokenizer.json.gz: Llama 3's is 17 MB as transformers writes it, 2.5 MB
    gzipped, and the carry (wheels + models + tree) must stay under 64 MiB. build_random unpacks it."""
    import gzip

    src = folder / "tokenizer.json"
    with open(src, "rb") as f, gzip.open(folder / "tokenizer.json.gz", "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    src.unlink()


def copy_shape_files(shape: Path, out: Path) -> None:
    """Everything of a shape folder but config.json into `out`, tokenizer.json.gz unpacked."""
    import gzip

    out.mkdir(parents=True, exist_ok=True)
    for f in shape.iterdir():
        if f.name == "tokenizer.json.gz":
            with gzip.open(f, "rb") as g, open(out / "tokenizer.json", "wb") as o:
                shutil.copyfileobj(g, o)
        elif f.name != "config.json" and f.is_file():
            shutil.copy2(f, out / f.name)


def folder_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20, 2)


def build_random(shape: Path, out: Path, dtype: str = "bfloat16", device: str | None = None, seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> dict:
    """Random weights (the architecture's own initialisation, seeded) for `shape`, saved with its
    tokenizer as a normal HF folder. Built on the GPU when there is one: a 3B model initialises
    there in seconds."""
    import time

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    start = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.from_pretrained(str(shape))
    for key, value in (overrides or {}).items():  # a tiny body for CPU runs of the check
        setattr(config, key, value)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    built = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))  # with its config (and any overrides)
    copy_shape_files(shape, out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"shape": str(shape), "out": str(out), "dtype": dtype, "device": device, "parameters": params,
            "build_seconds": round(built, 2), "total_seconds": round(time.perf_counter() - start, 2),
            "mib_on_disk": folder_mib(out)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.shapes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--llama-gguf", type=Path, help="llama.cpp's models/ggml-vocab-llama-bpe.gguf")
    parser.add_argument("--llama-template", type=Path,
                        help="llama.cpp's models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja")
    parser.add_argument("--random", nargs=2, type=Path, metavar=("SHAPE_DIR", "MODEL_DIR"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape-overrides", type=json.loads, default=None, help="JSON of config fields to change")
    args = parser.parse_args(argv)
    if args.random:
        print(json.dumps(build_random(*args.random, dtype=args.dtype, overrides=args.shape_overrides)))
        return 0
    if not (args.out and args.llama_gguf and args.llama_template):
        parser.error("give OUT_DIR --llama-gguf F --llama-template F, or --random SHAPE_DIR MODEL_DIR")
    write_smollm2_shape(args.out / SMOLLM2)
    write_llama_shape(args.out / LLAMA, args.llama_gguf, args.llama_template)
    for name in (SMOLLM2, LLAMA):
        print(f"{folder_mib(args.out / name):8.2f} MiB  {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
