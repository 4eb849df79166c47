"""A lost Colab runtime: outputs/ lived on Google Drive (POLO_OUTPUTS), the runtime went away in
the middle of training, and a new runtime mounts the same folder, possibly under another path.
The run continues there from its last checkpoint (resume: auto), and the best checkpoint that
early stopping keeps is found in the new place."""
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from polo_lib import params, pipeline, runs, train

pytestmark = pytest.mark.slow

# 8 steps, evaluated and saved every 2; early stopping on, so the trainer tracks a best checkpoint
STEPS = {"max_steps": 8, "save_steps": 2, "eval_steps": 2, "training.early_stopping_patience": 2}


class RuntimeLostAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise ConnectionAbortedError("the Colab runtime went away (injected by the test)")


class WorseFrom(TrainerCallback):
    """Evaluations from `step` on score worse, as overfitting would: the best checkpoint stays one
    saved before the runtime was lost (the trainer reads the metrics this callback changes)."""
    def __init__(self, step: int):
        self.step = step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step >= self.step:
            metrics["eval_loss"] += 10.0


def test_a_run_in_a_moved_outputs_folder_resumes_from_its_checkpoint_and_finds_its_best(
        tiny_model_dir, tmp_path, monkeypatch, caplog):
    first_mount, second_mount = tmp_path / "drive-1" / "outputs", tmp_path / "drive-2" / "outputs"
    monkeypatch.setenv("POLO_OUTPUTS", str(first_mount))
    cfg = params.load("smoke", overrides=STEPS)
    pipeline.prepare_stage(cfg)
    run = runs.open_run(cfg, stage="train")
    with pytest.raises(ConnectionAbortedError):
        pipeline.train_stage(cfg, run, callbacks=[RuntimeLostAt(7)], live=False)
    assert [p.name for p in train.checkpoints(run)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # the next runtime: the same files, another path
    shutil.move(str(first_mount), str(second_mount))
    monkeypatch.setenv("POLO_OUTPUTS", str(second_mount))
    moved = runs.lookup(run.id, status=None)
    assert moved.path == second_mount / "runs" / run.id
    resumed = runs.open_run(cfg, run.id, stage="train")
    with caplog.at_level(logging.WARNING, logger="transformers"):
        session = pipeline.train_stage(cfg, resumed, callbacks=[WorseFrom(8)], live=False)
    assert session.resume_from == moved.checkpoints / "checkpoint-6"
    state = session.trainer.state
    best = state.best_model_checkpoint
    assert state.global_step == 8 and best.startswith(str(moved.checkpoints)) and not best.endswith("-8")
    # without the move taken into account the trainer warns that the best checkpoint "does not exist
    # anymore" and forgets it: a later checkpoint could then replace it
    assert "does not exist anymore" not in caplog.text and "Could not locate the best model" not in caplog.text
    # the adapter kept is the best checkpoint's (loaded from the new place), not the last step's
    kept, saved = (load_file(str(p / "adapter_model.safetensors")) for p in (moved.adapter, Path(best)))
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)
    summary = moved.summary().training
    assert summary.resumed_from == "checkpoint-6" and summary.steps == 8 and summary.best_checkpoint == Path(best).name


@pytest.mark.parametrize("best,folder,expected", [
    (None, "/content/drive/MyDrive/polo-easy/outputs/runs/r/checkpoints", None),
    ("/content/drive/MyDrive/polo-easy/outputs/runs/r/checkpoints/checkpoint-40",
     "/content/drive/MyDrive/polo-easy/outputs/runs/r/checkpoints",
     "/content/drive/MyDrive/polo-easy/outputs/runs/r/checkpoints/checkpoint-40"),  # not moved
    ("/content/drive/MyDrive/polo-easy/outputs/runs/r/checkpoints/checkpoint-40",
     "/mnt/gdrive/polo-easy/outputs/runs/r/checkpoints",
     "/mnt/gdrive/polo-easy/outputs/runs/r/checkpoints/checkpoint-40"),
    ("/old/machine/runs/r/checkpoints/checkpoint-6", "/home/me/outputs/runs/r/checkpoints",
     "/home/me/outputs/runs/r/checkpoints/checkpoint-6"),
])
def test_the_best_checkpoint_is_found_where_the_run_folder_is_now(best, folder, expected):
    assert train.relocated(best, folder) == expected
