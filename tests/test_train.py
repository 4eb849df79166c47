"""Training on the tiny model with real Unsloth + TRL: masking guard, resume, early stopping, memory."""
import math
import re

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from polo_lib import data, device, model, notebook, params, pipeline, runs, train
from polo_lib.errors import DataError, ModelError, ParamsError, RunError

pytestmark = pytest.mark.slow


@pytest.fixture
def smoke(tiny_model_dir):
    """smoke params with its processed dataset written into this test's folder."""
    def make(**overrides):
        cfg = params.load("smoke", overrides=overrides)
        pipeline.prepare_stage(cfg)
        return cfg, data.load_processed(cfg.data)
    return make


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_MARKERS = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("template,instruction,response", [
    (None, "<|user|>\n", "<|assistant|>\n"),  # the tiny model's own template
    (LLAMA3_TEMPLATE, *LLAMA3_MARKERS),
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
     "<|im_start|>user\n", "<|im_start|>assistant\n"),
])
def test_markers_come_from_the_tokenizers_own_template(tiny_model_dir, template, instruction, response):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if template:
        tok.chat_template = template
    assert train.derive_markers(tok) == train.Markers(instruction, response)


def test_a_tokenizer_without_template_is_refused(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ModelError, match="has no chat template"):
        train.derive_markers(tok)


def test_marker_guard_names_examples_that_keep_no_label(smoke):
    """A wrong marker masks every label; TRL would then drop the examples or train at loss 0."""
    cfg, ds = smoke()
    tok = model.load_tokenizer(cfg.model)
    split = ds["train"]
    ids, n = list(split["id"]), len(split)
    good = train.derive_markers(tok)
    counts = train.label_counts(split, tok, good)
    assert min(counts) > 10
    train.check_labels("train", ids, counts, good)  # the template's own markers pass

    # markers hard-coded for another model, and the right one with one newline too many
    for wrong in (train.Markers(*LLAMA3_MARKERS), train.Markers(good.instruction, good.response + "\n")):
        bad = train.label_counts(split, tok, wrong)
        assert bad == [0] * n, wrong
        with pytest.raises(DataError) as exc:
            train.check_labels("train", ids, bad, wrong)
        assert f"{n} of {n} train example(s) keep no answer token after response-only masking: " \
               f"{', '.join(ids)}. The markers {wrong.instruction!r} / {wrong.response!r}" in str(exc.value)

    # right markers, but two examples lost their answer: only those two are named
    cut = {"messages": [[m for m in chat if i not in (1, 4) or m["role"] != "assistant"]
                        for i, chat in enumerate(split["messages"])]}
    partial = train.label_counts(cut, tok, good)
    assert partial[1] == partial[4] == 0 and all(partial[i] == counts[i] for i in range(n) if i not in (1, 4))
    with pytest.raises(DataError, match=rf"^2 of {n} train example\(s\) keep no answer token after "
                                        rf"response-only masking: {re.escape(ids[1])}, {re.escape(ids[4])}\. "):
        train.check_labels("train", ids, partial, good)


def test_parameter_table_sums_and_matches_the_recipe(smoke):
    cfg, _ = smoke()
    lm = model.load(cfg)
    table = model.parameter_table(lm.model)
    lora_rows = table[table.index.str.startswith("LoRA on")]
    assert lora_rows["parameters"].sum() == table.loc["trainable", "parameters"]
    assert set(lora_rows.index) == {f"LoRA on {m}" for m in cfg.lora.target_modules}
    assert table.loc["total", "parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert math.isclose(table.loc["trainable", "share_%"],
                        100 * table.loc["trainable", "parameters"] / table.loc["total", "parameters"], abs_tol=1e-3)
    recipe = model.recipe_parameter_table(cfg)
    assert recipe.loc["trainable", "parameters"] == table.loc["trainable", "parameters"]


def test_cpu_load_records_the_4bit_fallback_where_nf4_does_not_run(smoke):
    """A CPU without bitsandbytes (or one whose NF4 probe fails) loads 16-bit, recorded and said."""
    cfg, _ = smoke(**{"model.load_in_4bit": True})
    lm = model.load(cfg, device=device.PROFILES["cpu-no-bitsandbytes"])
    assert lm.applied["load_in_4bit"] == {"asked": True, "applied": False} and lm.applied["linear4bit_layers"] == 0
    assert "bitsandbytes is not installed" in lm.notes[0]


def test_missing_target_module_is_named(smoke):
    cfg, _ = smoke(**{"lora.target_modules": ["q_proj", "qkv_proj"]})
    with pytest.raises(ModelError, match=r"\['qkv_proj'\] not found.*q_proj"):
        model.load(cfg)


def test_memory_refusal_says_what_to_lower(smoke):
    cfg, _ = smoke(**{"per_device_train_batch_size": 4096, "max_seq_length": 131072})
    estimate = model.estimate_memory(cfg)
    assert not estimate.fits
    with pytest.raises(ModelError, match="per_device_train_batch_size.*max_seq_length.*memory_check: false"):
        model.check_memory(estimate)
    assert model.check_memory(estimate, enabled=False) is estimate
    small = model.estimate_memory(params.load("smoke"))
    assert small.fits and small.total < estimate.total


def test_the_checks_before_loading_are_one_call_whose_result_the_trainer_takes(smoke):
    """check_before_loading: trackers, schedule, resume point and memory, with no model loaded; each
    refusal is raised there. Its Ready is what build and the train notebook use."""
    cfg, ds = smoke()
    run = runs.open_run(cfg)
    ready = train.check_before_loading(cfg, ds, run)
    assert ready.resume_from is None and ready.schedule.total_steps == cfg.training.max_steps
    assert ready.memory.fits and "memory needed / free" in repr(ready) and "fresh start" in repr(ready)
    for overrides, error, message in (
            ({"per_device_train_batch_size": 4096, "max_seq_length": 131072}, ModelError, "memory_check: false"),
            ({"eval_steps": 1000, "save_steps": 1000}, ParamsError, "eval_steps")):
        with pytest.raises(error, match=message):
            train.check_before_loading(params.load("smoke", overrides=overrides), ds, run)


class StopAt(TrainerCallback):
    """Ends training after a given step, like a crash right after a checkpoint."""
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def train_once(cfg, ds, run, callbacks=None):
    """The recipe every path uses (pipeline.train_stage); `ds` is what it loads from disk."""
    return pipeline.train_stage(cfg, run, callbacks=callbacks, live=False)


def test_resumed_run_matches_uninterrupted_run(smoke):
    """A crash costs time, not results: resuming from a checkpoint ends where an
    uninterrupted run ends, step for step, on CPU, on the recipe's NF4 base (the 16-bit resume is
    tests/reliability/test_out_of_memory.py's continued run)."""
    cfg, ds = smoke(**{"model.load_in_4bit": True})
    whole = runs.open_run(cfg)
    train_once(cfg, ds, whole)
    broken = runs.open_run(cfg)
    train_once(cfg, ds, broken, callbacks=[StopAt(3)])
    assert [p.name for p in train.checkpoints(broken)] == ["checkpoint-3"]
    resumed = train_once(cfg, ds, broken)
    assert resumed.resume_from.name == "checkpoint-3"
    assert model.count_4bit_layers(resumed.lm.model) > 0 and broken.manifest()["decisions"]["load_in_4bit"]
    a = train.read_train_log(whole.logs / "train_log.csv")
    b = train.read_train_log(broken.logs / "train_log.csv")
    assert list(a["step"]) == list(b["step"])
    # NF4: the resumed steps agree to float rounding, not bit for bit (measured here: at most 1.5e-5
    # relative, in the last step); a resume that lost the optimizer state or the schedule moves them ~1e-2.
    pd.testing.assert_series_equal(a["loss"], b["loss"], rtol=1e-4)
    pd.testing.assert_series_equal(a["eval_loss"], b["eval_loss"], rtol=1e-4)


def test_fresh_start_in_a_run_with_checkpoints_is_refused(smoke, monkeypatch):
    cfg, ds = smoke()
    run = runs.open_run(cfg)
    train_once(cfg, ds, run, callbacks=[StopAt(3)])
    never = params.load("smoke", overrides={"run.resume": "never"})
    # command-line words outside a notebook (options), notebook words in one (parameters)
    with pytest.raises(RunError, match=r"already has checkpoints .*Start a new run \(leave out --run-id\) or "
                                       r"continue this one with --set run.resume=auto"):
        train.resolve_resume(run, never.run.resume)
    monkeypatch.setattr(notebook, "in_notebook", lambda: True)
    with pytest.raises(RunError, match=r"Start a new run \(run_id = None\) or continue this one with resume='auto'"):
        train.resolve_resume(run, never.run.resume)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(smoke, caplog):
    cfg, ds = smoke()
    run = runs.open_run(cfg)
    train_once(cfg, ds, run)
    latest = train.checkpoints(run)[-1]
    (latest / "trainer_state.json").unlink()
    assert train.resolve_resume(run, "auto") == train.checkpoints(run)[-2]
    assert "damaged" in caplog.text
    for ckpt in train.checkpoints(run):
        (ckpt / "trainer_state.json").unlink(missing_ok=True)
    with pytest.raises(RunError, match="every checkpoint is damaged"):
        train.resolve_resume(run, "auto")


def test_early_stopping_fires_on_a_plateau(smoke):
    """A learning rate too small to move the loss: no eval improves by the threshold, so the
    trainer stops after `patience` evaluations instead of running all steps."""
    cfg, ds = smoke(**{"max_steps": 20, "learning_rate": 1e-9, "eval_steps": 2, "save_steps": 2,
                       "early_stopping_patience": 2, "early_stopping_threshold": 0.01})
    session = train_once(cfg, ds, runs.open_run(cfg))
    assert session.result["early_stopped"] is True
    assert session.result["steps"] == 6  # evals at 2 (best), 4 and 6 (no improvement) -> stop


def test_merged_16bit_export_when_params_ask(smoke):
    """save_merged_16bit: a plain transformers model folder, LoRA folded in, loadable without PEFT."""
    from transformers import AutoModelForCausalLM

    cfg, ds = smoke(max_steps=2, eval_steps=2, save_steps=2, save_merged_16bit=True)
    run = runs.open_run(cfg)
    train_once(cfg, ds, run)
    merged = run.path / "merged_16bit"
    assert run.manifest()["artifacts"]["merged_16bit"] == str(merged)
    m = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n, _ in m.named_parameters())
    assert next(m.parameters()).dtype in (torch.float16, torch.bfloat16)


def test_a_short_run_with_warmup_trains_its_first_step_and_its_learning_rate_shows(smoke):
    """With transformers' own warmup, 0.1 of a 2-step run is 1 step at learning rate 0: the loss
    at step 2 was the same whatever the learning rate (three rates in a queue, one loss_last)."""
    losses = []
    for lr in (1e-3, 5e-3):
        cfg, ds = smoke(max_steps=2, eval_steps=2, save_steps=2, warmup_steps=0.1, learning_rate=lr)
        run = runs.open_run(cfg)
        train_once(cfg, ds, run)
        log = train.read_train_log(run.logs / "train_log.csv").dropna(subset=["loss"])
        assert log["learning_rate"].iloc[0] == pytest.approx(lr)  # step 1 trains at the rate asked
        losses.append(log["loss"].iloc[-1])
    assert losses[0] != losses[1]
