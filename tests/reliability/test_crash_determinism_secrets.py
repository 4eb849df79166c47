"""A crash costs time, not results; the same seed gives the same run; secrets stay out of runs."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from safetensors.torch import load_file

from polo_lib import paths, runs

pytestmark = pytest.mark.slow
# Long enough that the kill lands mid-training, short enough for the suite (~0.05 s a step).
SETS = ["--set", "max_steps=30", "--set", "eval_steps=3", "--set", "save_steps=3",
        "--set", "early_stopping_patience=0", "--set", "save_total_limit=2"]


def polo(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "polo_lib.cli", *args], cwd=paths.PROJ_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env=os.environ.copy(), **kw)


def finished_run(*args) -> runs.Run:
    proc = polo("run", "smoke", "--stages", "prepare,train", *SETS, *args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    return runs.lookup()


def comparable(run):
    """train_log.csv without tokens_per_s: a wall-clock rate, the one column that may differ."""
    return pd.read_csv(run.logs / "train_log.csv").drop(columns=["tokens_per_s"])


def test_sigkill_after_a_checkpoint_then_resume_ends_like_an_uninterrupted_run(tiny_model_dir):
    """Also the determinism check: two uninterrupted runs with the same params and seed give
    the same train_log.csv, to the last digit, on CPU."""
    whole = finished_run()
    again = finished_run()
    assert again.id != whole.id
    pd.testing.assert_frame_equal(comparable(whole), comparable(again), check_exact=True)

    proc = polo("run", "smoke", "--stages", "prepare,train", *SETS)
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in paths.runs_dir().glob("*/checkpoints/checkpoint-*/trainer_state.json")
                 if whole.id not in str(p) and again.id not in str(p)]
        if found:
            victim = runs.Run(found[0].parents[2].name, found[0].parents[2])
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: polo and its notebook kernel
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert victim is not None, "no checkpoint appeared before the run ended"
    assert victim.manifest()["status"] == "running"  # killed: nobody could record anything
    killed_at = pd.read_csv(victim.logs / "train_log.csv")["step"].max()
    assert killed_at < 30

    proc = polo("run", "smoke", "--stages", "train", "--run-id", victim.id, *SETS)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert victim.summary().training.resumed_from.startswith("checkpoint-")
    pd.testing.assert_frame_equal(comparable(whole), comparable(victim), rtol=1e-5)
    a = load_file(str(whole.adapter / "adapter_model.safetensors"))
    b = load_file(str(victim.adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key


def test_an_hf_token_in_the_environment_never_reaches_the_run_folder(tiny_model_dir, monkeypatch):
    token = "hf_FAKEtokenForTheSecretTest0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    proc = polo("run", "smoke", *SETS[:2])  # prepare, train, evaluate
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    run = runs.lookup()
    leaked = [p for p in run.path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == [] and token not in err.decode()
