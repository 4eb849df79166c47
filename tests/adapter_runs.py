"""Runs with a real PEFT adapter for the export, serve and explain tests: saved the way training
saves it (adapter + tokenizer in adapter/), with the LoRA B weights set to seeded noise so the
adapter visibly changes the model (training itself is covered by tests/test_train*.py and would
add a minute per model). Test modules import the fixtures they use; each module gets its own run.
"""
from __future__ import annotations

import socket

import pytest
import torch

from polo_lib import local_models, model, params, paths, prompts, runs

PARAGRAPH = "YOLO divides the input image into an S x S grid; each grid cell predicts B bounding boxes."


def make_adapter_run(outputs, params_name: str, noise_std: float, overrides=None):
    """A finished run whose adapter/ holds a LoRA adapter (B = seeded noise) and the tokenizer."""
    mp = pytest.MonkeyPatch()
    mp.setenv("POLO_OUTPUTS", str(outputs))
    try:
        cfg = params.load(params_name, overrides=overrides)
        run = runs.open_run(cfg)
        lm = model.load(cfg)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in lm.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * noise_std)
        lm.model.save_pretrained(str(run.adapter))
        lm.tokenizer.save_pretrained(str(run.adapter))
        run.update_summary(training={"steps": 0, "note": "test adapter"})
        run.update_manifest(status="finished")
    finally:
        mp.undo()
    return run


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return make_adapter_run(tmp_path_factory.mktemp("tiny") / "outputs", "smoke", noise_std=0.05)


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    # Small noise: SmolLM2 must still answer sensibly (and stop at <|im_end|>).
    return make_adapter_run(tmp_path_factory.mktemp("smollm2") / "outputs", "cpu", noise_std=0.002)


@pytest.fixture(scope="module")
def tiny_smollm2_run(tmp_path_factory):
    """A tiny random Llama that speaks SmolLM2's tokenizer, for the GGUF export: llama.cpp's converter
    knows that tokenizer (the tiny test model's home-made one it refuses), and its work does not
    depend on the model's size: at ~3 M parameters the conversion and read-backs take seconds,
    where SmolLM2's 135 M took over a minute. Its base loads in 4-bit NF4, as the seed recipe's."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    source = local_models.resolve("smollm2-135m-instruct")
    folder = tmp_path_factory.mktemp("tiny_smollm2") / "model"
    config = LlamaConfig.from_pretrained(source)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    GenerationConfig.from_pretrained(source).save_pretrained(folder)
    # on an NF4 base (cpu_qlora): the GGUF export of a 4-bit run merges into its 16-bit base first
    return make_adapter_run(tmp_path_factory.mktemp("tiny_smollm2_run") / "outputs", "cpu_qlora", noise_std=0.05,
                            overrides={"model.model_name": str(folder)})


@pytest.fixture(scope="module")
def tiny_server(tiny_run):
    """`polo serve` of the module's tiny run in a background thread: (backend, base URL)."""
    from polo_lib.deploy import serve

    backend = serve.load_backend(tiny_run, max_batch_size=8, batch_wait_ms=50)
    port = free_port()
    server = serve.start_in_thread(serve.create_app(backend), port=port)
    yield backend, f"http://127.0.0.1:{port}"
    server.should_exit = True
    server.thread.join(timeout=10)
    backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_logits(m, tokenizer, text: str):
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return m(**enc).logits[0, -1].float()


def easy_prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(prompts.build_messages(PARAGRAPH), tokenize=False, add_generation_prompt=True)


def assert_portable(folder, run) -> None:
    """An export names its base model and run, never a folder of the machine that made it."""
    import os

    machine = {str(paths.PROJ_ROOT), str(paths.model_cache_dir()), str(run.path.parents[1]),
               os.path.expanduser("~"), str(run.path)}
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".md", ".jinja", ".txt", ".yaml", ""):
            text = p.read_text(encoding="utf-8", errors="replace")
            leaks = sorted(m for m in machine if m in text)
            assert not leaks, f"{p.name} holds this machine's path(s) {leaks}"
