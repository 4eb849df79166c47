"""A crash costs time, not results; secrets stay out of runs. (The same seed giving the same run to the last
digit, across processes and between a notebook's kernel and `--in-process`: tests/test_train_notebook.py.)"""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from safetensors.torch import load_file

from polo_lib import paths, pipeline, runs

pytestmark = pytest.mark.slow
# Long enough that the kill lands mid-training (it lands at the first checkpoint, step 3, with 9
# steps and 3 evaluations still to go), short enough for the suite (~0.05 s a step).
STEPS = 12
OVERRIDES = {"max_steps": STEPS, "eval_steps": 3, "save_steps": 3, "early_stopping_patience": 0, "save_total_limit": 2}
SETS = [arg for key, value in OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
# An HF token in the environment of every process of the killed and resumed run (tests/test_train_notebook.py
# checks a run made through the notebooks' kernels)
TOKEN = "hf_FAKEtokenForTheSecretTest0123456789"


def polo(*args):
    return subprocess.Popen([sys.executable, "-m", "polo_lib.cli", *args], cwd=paths.PROJ_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "HF_TOKEN": TOKEN})


def comparable(run):
    """train_log.csv without tokens_per_s: a wall-clock rate, the one column that may differ."""
    return pd.read_csv(run.logs / "train_log.csv").drop(columns=["tokens_per_s"])


@pytest.fixture(scope="module")
def whole(tiny_model_dir, tmp_path_factory):
    """One uninterrupted run, in this process (`polo run --in-process`): the reference of the test below."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("whole")
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        yield pipeline.run_pipeline("smoke", overrides=OVERRIDES, stages=["prepare", "train"], log=lambda *a: None,
                                    in_process=True)


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_model_dir, tmp_path_factory):
    """`polo run` killed by SIGKILL, its whole process group, at its first checkpoint, then continued with
    `--run-id` through training and evaluation. Returns what the folder said at the kill and the resumed run."""
    root = tmp_path_factory.mktemp("killed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        at_kill, victim = kill_at_the_first_checkpoint(polo("run", "smoke", "--stages", "prepare,train",
                                                            "--in-process", *SETS))
        proc = polo("run", "smoke", "--stages", "train,evaluate", "--run-id", victim.id, "--in-process", *SETS)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert TOKEN not in err.decode()
    return at_kill, victim


def kill_at_the_first_checkpoint(proc) -> tuple[dict, runs.Run]:
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list(paths.runs_dir().glob("*/checkpoints/checkpoint-*/trainer_state.json"))
        if found:
            victim = runs.Run(found[0].parents[2].name, found[0].parents[2])
            os.killpg(proc.pid, signal.SIGKILL)  # its whole group (a notebook's kernel too, were there one)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert victim is not None, "no checkpoint appeared before the run ended"
    at_kill = {"status": victim.manifest()["status"],
               "step": pd.read_csv(victim.logs / "train_log.csv")["step"].max()}
    return at_kill, victim


def test_sigkill_after_a_checkpoint_then_resume_ends_like_an_uninterrupted_run(whole, killed_and_resumed):
    at_kill, victim = killed_and_resumed
    assert at_kill["status"] == "running"  # killed: nobody could record anything
    assert at_kill["step"] < STEPS
    assert victim.manifest()["status"] == "finished"
    assert victim.summary().training.resumed_from.startswith("checkpoint-")
    pd.testing.assert_frame_equal(comparable(whole), comparable(victim), rtol=1e-5)
    a = load_file(str(whole.adapter / "adapter_model.safetensors"))
    b = load_file(str(victim.adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key


def test_an_hf_token_in_the_environment_never_reaches_the_run_folder(killed_and_resumed):
    """Every file of a run whose processes (train, killed; train again and evaluate) had the token."""
    run = killed_and_resumed[1]
    assert run.manifest()["stages"]["evaluate"]["status"] == "finished"
    leaked = [p for p in run.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
