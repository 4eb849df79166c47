"""Where inputs and reloaded exports go on a GPU machine, decided by pure functions tested here
on CPU (the GPU branches run nowhere else before a user's first Colab run).

Unsloth's fast generation keeps input_ids on the device they arrive on, so every generate call
in polo_lib encodes through inference.encode_prompts; export checks reload in 16 bits on the
GPU, never a 3B model in fp32 on the CPU.
"""
from __future__ import annotations

import ast

import pytest
import torch

from polo_lib import inference, paths, prompts
from polo_lib.device import Device
from polo_lib.errors import ModelError

T4 = Device("cuda", "Tesla T4", 15 * 2 ** 30, 14 * 2 ** 30, compute_capability=(7, 5))  # fp16 only
A100 = Device("cuda", "NVIDIA A100-SXM4-40GB", 40 * 2 ** 30, 39 * 2 ** 30, compute_capability=(8, 0))
CPU = Device("cpu", "x86_64", 8 * 2 ** 30, 6 * 2 ** 30)


@pytest.mark.parametrize("embedding,model_device,expected", [
    ("cuda:0", "cuda:0", "cuda:0"),
    ("cuda:1", "cuda:0", "cuda:1"),   # spread over GPUs: ids go where the embeddings are
    (None, "cuda:0", "cuda:0"),       # no input embeddings: the model's device
    ("meta", "cuda:0", "cuda:0"),     # offloaded embeddings say nothing
    ("cpu", "cpu", "cpu"),
    ("meta", None, "meta"),
])
def test_inputs_go_where_the_input_embeddings_are(embedding, model_device, expected):
    assert inference.pick_input_device(embedding, model_device) == torch.device(expected)


def test_a_model_without_any_device_is_a_clear_error():
    with pytest.raises(ModelError, match="cannot tell which device"):
        inference.pick_input_device(None, None)
    with pytest.raises(ModelError, match="cannot tell which device"):
        inference.input_device(object())


def test_encoded_prompts_land_on_the_device_the_model_reports(tiny_model_dir):
    """The real tiny model: on CPU the ids are on the CPU; moved to another device (meta, the one
    other device a CPU-only torch has) the same call puts them there, as it would on cuda."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    texts = [tok.apply_chat_template(prompts.build_messages(p), tokenize=False, add_generation_prompt=True)
             for p in ("YOLO is fast.", "Each grid cell predicts boxes.")]
    tok.padding_side = "left"
    on_cpu = inference.encode_prompts(tok, texts, m)
    assert {t.device.type for t in on_cpu.values()} == {"cpu"} and on_cpu["input_ids"].shape[0] == 2
    m.to("meta")
    assert m.device.type == "meta"
    moved = inference.encode_prompts(tok, texts, m)
    assert {t.device.type for t in moved.values()} == {"meta"}
    assert moved["input_ids"].shape == on_cpu["input_ids"].shape


def _generate_calls(tree: ast.AST):
    """(function, how each **kwargs of a .generate(...) call was made) for every such call."""
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        made = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                f = node.value.func
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        made[target.id] = getattr(f, "attr", None) or getattr(f, "id", None)
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "generate"):
                continue
            polos_own = getattr(getattr(node.func, "value", None), "id", None) == "inference"  # serve, chat app
            if not polos_own and any(kw.arg == "max_new_tokens" for kw in node.keywords):  # transformers'
                yield fn.name, [made.get(kw.value.id) for kw in node.keywords
                                if kw.arg is None and isinstance(kw.value, ast.Name)]


def test_every_generate_call_in_polo_lib_encodes_through_encode_prompts():
    """A generate call fed by a plain tokenizer call gives CPU tensors to a CUDA model."""
    calls = []
    for path in sorted((paths.PROJ_ROOT / "polo_lib").rglob("*.py")):
        for fn, makers in _generate_calls(ast.parse(path.read_text(encoding="utf-8"))):
            calls.append((path.name, fn, makers))
    assert {(f, fn) for f, fn, _ in calls} >= {("generation.py", "_generate_ids")}  # generate, check_generates
    wrong = [c for c in calls if "encode_prompts" not in c[2]]
    assert not wrong, f"model.generate(...) whose inputs do not come from inference.encode_prompts: {wrong}"


@pytest.mark.parametrize("device,dtype,device_map", [
    (T4, torch.float16, "cuda"),        # no bf16 below compute capability 8.0
    (A100, torch.bfloat16, "cuda"),
    (CPU, torch.float32, "cpu"),
])
def test_exports_reload_in_16_bits_on_the_gpu_and_fp32_on_the_cpu(device, dtype, device_map):
    assert inference.reload_options(device) == {"dtype": dtype, "device_map": device_map}


def test_reload_options_refuse_an_unknown_device():
    with pytest.raises(ModelError, match="'mps' is neither 'cuda' nor 'cpu'"):
        inference.reload_options(Device("mps", "Apple", 0, 0))
    with pytest.raises(ModelError, match="pass device.describe"):
        inference.reload_options(None)
    assert inference.reload_options(T4.as_dict())["dtype"] == torch.float16  # a manifest's dict works too
