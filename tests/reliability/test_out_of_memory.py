"""Out of memory in training: the failure names the step, the memory and the ways out, and the
run continues with half the micro-batch and twice the accumulation (the same effective batch)
from its last checkpoint, training on the same samples per optimizer step as a run that never
ran out of memory. The exception is the real one (torch.OutOfMemoryError), raised by a trainer
callback at a chosen step: a CPU cannot run out of GPU memory on purpose."""
import shlex

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from polo_lib import cli, params, pipeline, runs, train
from polo_lib.errors import RunError

pytestmark = pytest.mark.slow

# 6 steps of 4 examples, a checkpoint every 2 steps; the injected failure comes in step 5
SPLIT = {"max_steps": 6, "save_steps": 2, "eval_steps": 2,
         "training.per_device_train_batch_size": 4, "training.gradient_accumulation_steps": 1}
# The trainer logs each step's loss rounded to 4 decimals; measured here, the two runs' logged
# losses are equal at that precision (largest difference 0.0), so one unit of the last decimal.
LOSS_ATOL = 1e-4


class OutOfMemoryAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


def per_step(run) -> tuple[list[int], list[float]]:
    """Tokens trained on in each optimizer step, and each step's loss, from the run's train_log.csv."""
    log = train.read_train_log(run.logs / "train_log.csv")
    rows = log[log["loss"].notna()].drop_duplicates("step", keep="last").set_index("step")
    seen = [0, *rows["tokens_seen"].astype(int)]
    return [b - a for a, b in zip(seen, seen[1:])], list(rows["loss"])


def test_out_of_memory_names_a_way_out_and_the_run_continues_with_half_the_micro_batch(tiny_model_dir):
    cfg = params.load("smoke", overrides=SPLIT)
    pipeline.prepare_stage(cfg)
    whole = runs.open_run(cfg, stage="train")
    pipeline.train_stage(cfg, whole, live=False)

    run = runs.open_run(cfg, stage="train")
    with pytest.raises(RunError) as failed:
        pipeline.train_stage(cfg, run, callbacks=[OutOfMemoryAt(5)], live=False)
    message = str(failed.value)
    record = run.manifest()["training"]["out_of_memory"]
    assert record["step"] == 5 and record["continue_from"] == "checkpoint-4"
    assert record["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "training step 5 of 6" in message and "memory in GiB: peak_rss_gib" in message
    assert "per_device_train_batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2" in message
    assert "same effective batch of 4" in message and record["command"] in message

    # the command the message gives is one the CLI takes, and it continues this run
    args = cli.build_parser().parse_args(shlex.split(record["command"])[1:])
    assert args.run_id == run.id
    halved = pipeline.resolve(args.params, cli.parse_sets(args.sets))
    assert (halved.training.per_device_train_batch_size, halved.training.gradient_accumulation_steps) == (2, 2)
    with pytest.raises(RunError, match="other params .*per_device_train_batch_size"):  # the effective batch changes
        runs.open_run(params.load("smoke", overrides={**SPLIT, "training.per_device_train_batch_size": 2}), run.id)
    resumed = runs.open_run(halved, run.id, stage="train")
    session = pipeline.train_stage(halved, resumed, live=False)
    assert session.resume_from.name == "checkpoint-4" and run.summary().training.resumed_from == "checkpoint-4"
    args = session.trainer.args  # it really trained the last steps in micro-batches of 2
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2)
    change = run.manifest()["batch_split_changes"]
    assert [(c["from"], c["to"], c["effective_batch"], c["out_of_memory_at_step"]) for c in change] == [
        ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
         {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, 4, 5)]
    assert run.params().training.per_device_train_batch_size == 2  # params.yaml: how the rest trained

    # the same samples in every optimizer step as the run that never failed, and the same losses
    tokens, losses = per_step(run)
    whole_tokens, whole_losses = per_step(whole)
    assert len(tokens) == 6 and tokens == whole_tokens, (tokens, whole_tokens)
    np.testing.assert_allclose(losses, whole_losses, rtol=0, atol=LOSS_ATOL)
    # a finished training keeps its split
    with pytest.raises(RunError, match="unfinished training"):
        runs.open_run(params.load("smoke", overrides={**SPLIT, "training.per_device_train_batch_size": 1,
                                                      "training.gradient_accumulation_steps": 4}), run.id)


@pytest.mark.parametrize("batch,expected", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (9, 3), (12, 6)])
def test_the_smaller_micro_batch_divides_the_batch(batch, expected):
    assert train.smaller_micro_batch(batch) == expected


FOUR_BIT = {"model.load_in_4bit": True}


@pytest.mark.parametrize("batch,accumulation,checkpointing,longest,four_bit,expected", [
    # micro-batch first (the run continues), then what needs a new run
    (4, 2, "unsloth", 900, False, [({"training.per_device_train_batch_size": 2,
                                     "training.gradient_accumulation_steps": 4}, True),
                                   ({"model.max_seq_length": 900}, False)]),
    (6, 1, "false", None, False, [({"training.per_device_train_batch_size": 3,
                                    "training.gradient_accumulation_steps": 2}, True),
                                  ({"lora.use_gradient_checkpointing": "unsloth"}, False)]),
    (1, 8, "unsloth", 1024, False, [(FOUR_BIT, False)]),  # nothing left to split, no shorter limit: 4-bit
    (1, 8, "unsloth", 1024, True, [({}, False)]),         # already 4-bit: a smaller r or model
    (1, 4, "unsloth", 512, False, [({"model.max_seq_length": 512}, False), (FOUR_BIT, False)]),
    (1, 4, "unsloth", 512, True, [({"model.max_seq_length": 512}, False), ({}, False)]),
])
def test_ways_out_of_memory_come_from_the_params(batch, accumulation, checkpointing, longest, four_bit, expected):
    cfg = params.load("smoke", overrides={"training.per_device_train_batch_size": batch,
                                          "training.gradient_accumulation_steps": accumulation,
                                          "lora.use_gradient_checkpointing": checkpointing})
    ways = train.oom_ways_out(cfg.training, cfg.lora, 1024, longest, four_bit=four_bit)
    if four_bit:  # the advice never offers what is already on
        assert not any("model.load_in_4bit" in w.overrides for w in ways)
        assert "even on its 4-bit base" in ways[-1].what
    assert [(w.overrides, w.continues_run) for w in ways] == expected
    for w in ways:
        if w.continues_run:  # the effective batch is kept
            o = w.overrides
            assert o["training.per_device_train_batch_size"] * o["training.gradient_accumulation_steps"] == \
                batch * accumulation
