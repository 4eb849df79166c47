"""QLoRA for real on the CPU: the seed recipe's quantized half (NF4 base, LoRA on top) runs through
bitsandbytes' CPU backend, which Unsloth's CPU loader uses once its NF4 probe passes. One `polo run`
of the smoke params with `model.load_in_4bit=true` (train and evaluate notebooks, ~70 s) is shared by
the tests here; each asserts what the model really holds (Linear4bit layers), never what was asked.

Resuming a 4-bit run is tests/test_train.py's resume test; the GGUF export of a 4-bit run is
tests/test_export_gguf.py's (its run is 4-bit)."""
from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
from adapter_runs import free_port

from polo_lib import data, device, inference, local_models, model, params, pipeline, prompts, train
from polo_lib.deploy import export, serve
from polo_lib.errors import ModelError

pytestmark = pytest.mark.slow

FOUR_BIT = {"model.load_in_4bit": True}
# the tiny Llama: 2 layers x (q, k, v, o, gate, up, down) linear layers quantized; lm_head stays 16-bit
TINY_LINEAR_LAYERS = 14
# The 4-bit run's adapter against its merge into the 16-bit base, greedy tokens of 3 paragraphs:
# NF4 rounds every base weight, so the tiny random model's answers part after a few tokens
# (measured here: 0.44 of the tokens agree). That the merge holds the adapter at all is
# tests/test_export_gguf.py's logits check (its run is 4-bit too).
MERGED_FROM_4BIT_AGREEMENT = 0.3


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tmp_path_factory):
    """`polo run smoke --set model.load_in_4bit=true --in-process`: prepare, train and evaluate, on an NF4 base."""
    if not device.describe().nf4:
        pytest.fail("bitsandbytes' NF4 does not run on this machine: " + device.no_nf4_reason(device.describe()))
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("qlora_run")
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        yield pipeline.run_pipeline("smoke", overrides=FOUR_BIT, log=lambda *a: None, in_process=True)


def test_polo_run_trains_and_evaluates_on_an_nf4_base(qlora_run, record_agrees):
    """The decision says NF4, the loaded model holds the Linear4bit layers, and the run learns:
    a test that fails the moment 4-bit is quietly dropped on the CPU."""
    run = qlora_run
    record_agrees(run)
    manifest = run.manifest()
    assert manifest["decisions"]["load_in_4bit"] is True and manifest["decisions"]["notes"] == []
    assert manifest["device"]["nf4"] is True
    assert manifest["model"]["load_in_4bit"] == {"asked": True, "applied": True}
    assert manifest["model"]["linear4bit_layers"] == TINY_LINEAR_LAYERS
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert f"- precision: 4-bit NF4 + float32 ({TINY_LINEAR_LAYERS} Linear4bit layers), optimizer adamw_torch_fused" \
        in report
    training = run.summary().training
    assert training.steps == 6 and training.loss_last < training.loss_first
    assert training.eval_loss_best < training.eval_loss_first
    assert {"train", "evaluate"} <= set(manifest["stages"]) and run.summary().evaluation is not None
    # the evaluation loaded the adapter on the same NF4 base the training used
    tuned = inference.load_tuned(run.params(), run)
    try:
        assert model.count_4bit_layers(tuned.model) == TINY_LINEAR_LAYERS
    finally:
        del tuned
        inference.free_memory()


def test_a_4bit_run_exports_its_adapter_and_merges_into_the_16bit_base_with_parity(qlora_run):
    """Unsloth's CPU backend cannot fold LoRA into NF4 weights: the merge loads the 16-bit base the
    NF4 one was quantized from, and the card's parity says the merge is not the 4-bit model."""
    from transformers import AutoModelForCausalLM

    run = qlora_run
    cfg = run.params()
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    adapter, merged = export.export(run, "adapter"), export.export(run, "merged")
    (same,) = json.loads((adapter.path / "parity.json").read_text(encoding="utf-8"))["pairs"]
    assert same["expected"] == "identical" and same["identical"] == same["of"] == 3  # the adapter on NF4 again
    (pair,) = json.loads((merged.path / "parity.json").read_text(encoding="utf-8"))["pairs"]
    assert pair["expected"] == "tolerance" and pair["why"] == "the adapter ran on the 4-bit base; the merge is 16-bit"
    assert pair["token_agreement"] >= MERGED_FROM_4BIT_AGREEMENT, pair
    card = (merged.path / "README.md").read_text(encoding="utf-8")
    assert "## Parity" in card and "the adapter ran on the 4-bit base" in card
    assert merged.check["dtype_on_disk"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(str(merged.path))
    assert model.count_4bit_layers(reloaded) == 0 and not any("lora" in n for n, _ in reloaded.named_parameters())


def test_polo_serve_answers_from_the_4bit_run(qlora_run):
    backend = serve.load_backend(qlora_run)
    port = free_port()
    server = serve.start_in_thread(serve.create_app(backend), port=port)
    try:
        assert model.count_4bit_layers(backend.lm.model) == TINY_LINEAR_LAYERS
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": backend.model_id, "messages": prompts.build_messages("YOLO is fast."), "max_tokens": 6}).json()
        assert 0 < reply["usage"]["completion_tokens"] <= 6, reply
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
        backend.close()


def test_params4bit_weights_count_as_the_16bit_model_they_came_from(tiny_model_dir):
    """parameter_table counts a Params4bit weight by its quant_state shape: the real NF4 model and the
    16-bit one have the same total and trainable parameters, and the NF4 one stores fewer bytes."""
    four = model.load(params.load("smoke", overrides=FOUR_BIT))
    sixteen = model.load(params.load("smoke"))
    assert model.count_4bit_layers(four.model) == TINY_LINEAR_LAYERS and model.count_4bit_layers(sixteen.model) == 0
    a, b = model.parameter_table(four.model), model.parameter_table(sixteen.model)
    assert a["parameters"].to_dict() == b["parameters"].to_dict()
    assert a.loc["total", "bytes"] < b.loc["total", "bytes"]
    assert a.loc["trainable", "bytes"] == b.loc["trainable", "bytes"]  # LoRA stays in float32
    # and a loaded model that is not what was decided stops the run, either way round
    decided_4bit = device.decide_for(params.load("smoke", overrides=FOUR_BIT))
    with pytest.raises(ModelError, match="4-bit NF4 was decided .* holds no bitsandbytes Linear4bit layer"):
        model.check_applied(sixteen.model, decided_4bit, "tiny-llama")
    with pytest.raises(ModelError, match="14 Linear4bit layers loaded where float32 weights were decided"):
        model.check_applied(four.model, device.decide_for(params.load("smoke")), "tiny-llama")
    decided_bf16 = dataclasses.replace(device.decide_for(params.load("smoke")), dtype="bfloat16")
    with pytest.raises(ModelError, match="loaded in float32 where bfloat16 was decided"):
        model.check_applied(sixteen.model, decided_bf16, "tiny-llama")


def test_a_decided_4bit_load_that_comes_back_16bit_stops_the_run(tiny_model_dir, monkeypatch):
    """Decided on a CPU where NF4 runs; then Unsloth's loader is told NF4 does not (its own switch, which
    its probe reads once per process: the probe's cache is cleared around the test) and loads 16-bit
    weights without failing: the load itself refuses the model."""
    from unsloth_zoo.cpu.runtime import cpu_bnb_4bit_supported

    cfg = params.load("smoke", overrides=FOUR_BIT)
    decided = device.decide(device.PROFILES["cpu"], cfg.model, cfg.lora, cfg.training)
    assert decided.load_in_4bit
    monkeypatch.setenv("UNSLOTH_CPU_LOAD_IN_4BIT", "0")
    cpu_bnb_4bit_supported.cache_clear()
    try:
        with pytest.raises(ModelError, match="4-bit NF4 was decided .* holds no bitsandbytes Linear4bit layer"):
            model.from_pretrained(local_models.resolve(cfg.model.model_name), cfg, decided)
    finally:
        monkeypatch.delenv("UNSLOTH_CPU_LOAD_IN_4BIT")
        cpu_bnb_4bit_supported.cache_clear()


@pytest.mark.parametrize("changed,message", [
    ({}, None),
    ({"optim": "adamw_8bit"}, "optimizer: adamw_torch_fused built, adamw_8bit decided"),
    ({"bf16": True}, "bf16: False built, True decided"),
])
def test_the_trainer_is_checked_against_the_decisions(changed, message, tmp_path):
    from transformers import TrainingArguments

    decided = dataclasses.replace(device.decide_for(params.load("smoke")), **changed)
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", use_cpu=True, report_to=[])
    if message is None:
        train.check_trainer(args, decided)
    else:
        with pytest.raises(ModelError, match=message):
            train.check_trainer(args, decided)
