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
# Long enough that the kill lands mid-training (it lands at the first checkpoint, step 3, with 9
# steps and 3 evaluations still to go), short enough for the suite (~0.05 s a step).
STEPS = 12
SETS = ["--set", f"max_steps={STEPS}", "--set", "eval_steps=3", "--set", "save_steps=3",
        "--set", "early_stopping_patience=0", "--set", "save_total_limit=2"]


def polo(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "polo_lib.cli", *args], cwd=paths.PROJ_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env=env or os.environ.copy())


TOKEN = "hf_FAKEtokenForTheSecretTest0123456789"


def finished_run(*args, env=None) -> runs.Run:
    proc = polo("run", "smoke", *args, *SETS, env=env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert TOKEN not in err.decode()
    return runs.lookup()


def comparable(run):
    """train_log.csv without tokens_per_s: a wall-clock rate, the one column that may differ."""
    return pd.read_csv(run.logs / "train_log.csv").drop(columns=["tokens_per_s"])


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    """Two uninterrupted `polo run`s with the same params and seed, shared by the tests below (each
    costs a process, a kernel and Unsloth's import): the second with an HF token in its environment,
    and with the evaluate stage too, so the secret check covers every file a run writes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(tmp_path_factory.mktemp("two_runs") / "outputs"))
        whole = finished_run("--stages", "prepare,train")
        again = finished_run("--stages", "prepare,train,evaluate", env={**os.environ, "HF_TOKEN": TOKEN})
        yield whole, again


def test_the_same_params_and_seed_give_the_same_train_log_to_the_last_digit(two_runs):
    whole, again = two_runs
    assert again.id != whole.id
    pd.testing.assert_frame_equal(comparable(whole), comparable(again), check_exact=True)


def test_an_hf_token_in_the_environment_never_reaches_the_run_folder(two_runs):
    run = two_runs[1]
    assert run.manifest()["stages"]["evaluate"]["status"] == "finished"
    leaked = [p for p in run.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_sigkill_after_a_checkpoint_then_resume_ends_like_an_uninterrupted_run(two_runs):
    whole, again = two_runs
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
    assert killed_at < STEPS

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
