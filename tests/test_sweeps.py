"""Sweeps: the file is checked against params before any trial; trials are real run folders on the
tiny model; a failing trial is a row, not the end; an interrupted sweep resumes; the pruner stops
a bad trial; Ray Tune runs the same trials on a local instance."""
import json

import pandas as pd
import papermill as pm
import pytest
import yaml

from polo_lib import cli, paths, runs, sweeps
from polo_lib.errors import ParamsError, RunError

QUIET = {"log": lambda *a: None}
# Every trial: 2-4 steps on the tiny model, evaluations without checkpoints to compare.
FAST = {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "early_stopping_patience": 0}


def write_sweep(tmp_path, name="t", **body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "set": FAST, **body}), encoding="utf-8")
    return path


# ------------------------------------------------------------------ validation (fast)

def test_every_problem_in_a_sweep_file_is_reported_at_once_before_anything_is_written(tmp_path):
    path = write_sweep(tmp_path, n_trials=3, samplr={"type": "tpe"}, space={
        "learnig_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2},    # typo
        "lora_r": {"type": "float", "low": 4, "high": 16},                   # an int field
        "lora_dropout": {"type": "float", "low": 0.0, "high": 1.5},          # out of range for params
        "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosin"]},
    }, objective={"metric": "chrf", "direction": "minimize"})
    with pytest.raises(ParamsError) as e:
        sweeps.run_sweep(path, **QUIET)
    msg = str(e.value)
    assert "unknown key 'samplr'. Did you mean 'sampler'?" in msg
    # the first pass stops at the file's own keys; fix it and the params-level problems all show
    path = write_sweep(tmp_path, n_trials=3, space=yaml.safe_load(path.read_text())["space"],
                       objective={"metric": "chrf", "direction": "minimize"})
    with pytest.raises(ParamsError) as e:
        sweeps.run_sweep(path, **QUIET)
    msg = str(e.value)
    assert "unknown override 'learnig_rate'. Did you mean 'learning_rate'?" in msg
    assert "space.lora_r: lora.r is an integer field; use type: int or categorical" in msg
    assert "space.lora_dropout = 1.5" in msg and "less than 1" in msg
    assert "space.lr_scheduler_type = 'cosin'" in msg
    assert "objective.direction minimize for 'chrf', but higher is better for it: use maximize" in msg
    assert not (paths.outputs_dir() / "sweeps").exists() and not paths.runs_dir().exists()


def test_objective_names_resolve_to_summary_figures_with_their_direction(tmp_path):
    space = {"learning_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2}}
    loss = sweeps.load(write_sweep(tmp_path, "a", n_trials=1, space=space))
    chrf = sweeps.load(write_sweep(tmp_path, "b", n_trials=1, space=space, objective={"metric": "chrf"}))
    assert (loss.metric, loss.direction, loss.needs_evaluation) == ("training.eval_loss_best", "minimize", False)
    assert (chrf.metric, chrf.direction, chrf.needs_evaluation) == ("evaluation.tuned.chrf", "maximize", True)
    with pytest.raises(ParamsError, match="'chrff' is not a figure of summary.json. Did you mean 'chrf'"):
        sweeps.load(write_sweep(tmp_path, "c", n_trials=1, space=space, objective={"metric": "chrff"}))
    with pytest.raises(ParamsError, match="sampler grid needs a finite grid: give learning_rate a step"):
        sweeps.load(write_sweep(tmp_path, "d", n_trials=1, space=space, sampler={"type": "grid"}))
    with pytest.raises(ParamsError, match="no evaluation comes before the end to prune on"):
        sweeps.load(write_sweep(tmp_path, "e", n_trials=1, space=space, set={**FAST, "eval_steps": 4, "save_steps": 4}))
    align_space = {"align.learning_rate": {"type": "log_float", "low": 1e-5, "high": 1e-3}}
    with pytest.raises(ParamsError, match=r"searches the align stage \(align.learning_rate\), but objective.metric "
                                          "'eval_loss' is a training figure"):
        sweeps.load(write_sweep(tmp_path, "f", n_trials=1, space=align_space))
    assert sweeps.load(write_sweep(tmp_path, "g", n_trials=1, space=align_space, objective={"metric": "sari"}))


def test_the_shipped_sweep_files_validate():
    for path in sorted(sweeps.SWEEPS_DIR.glob("*.yaml")):
        sweep = sweeps.load(path)
        assert sweep.spec.n_trials >= 1 and not sweep.data_varies, path.name


# ------------------------------------------------------------------ trials (slow)

@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_model_dir, capsys):
    """3 max_seq_length values on a grid with over_length: fail. The tiny model's examples are
    310-547 tokens, so the 256 trial fails at the data's own length check (a DataError naming
    the examples) while the 2 others train; the sweep goes on and reports 2 + 1."""
    path = write_sweep(tmp_path, "lengths", n_trials=3, set={**FAST, "max_steps": 2, "over_length": "fail"},
                       space={"max_seq_length": {"type": "categorical", "choices": [1024, 640, 256]}},
                       sampler={"type": "grid", "seed": 0}, pruner={"type": "none"})
    assert cli.main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("  eval at step 2/2: ") == 2  # each trial that trained showed its progress
    assert out.count("  eval at step 0/2: ") == 2 and "  train 2/2 (100%)  epoch " in out
    folder = next((paths.outputs_dir() / "sweeps").iterdir())
    table = sweeps.results_table(sweeps.load_study(folder.name)).set_index("params_max_seq_length")
    assert sorted(table["status"]) == ["failed", "finished", "finished"]
    failed = table.loc[256]
    assert failed["status"] == "failed" and "DataError" in failed["error"]
    assert "exceed max_seq_length=256" in failed["error"]
    assert table.loc[[1024, 640], "objective"].notna().all()
    reg = runs.registry()
    assert reg.loc[failed["run_id"], "status"] == "failed"            # the run folder says so too
    assert "exceed max_seq_length=256" in reg.loc[failed["run_id"], "problem"]
    assert set(reg.loc[table["run_id"], "params"]) == {f"lengths-t{i:03d}" for i in range(3)}
    best = table["objective"].idxmin()
    assert f"run {table.loc[best, 'run_id']}" in out
    assert (folder / "results.csv").is_file() and (folder / "plots" / "history.png").is_file()
    assert (folder / "plots" / "importance.png").is_file()
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "2 finished" in report and "1 failed" in report and table.loc[best, "run_id"] in report
    saved = runs.lookup(table.loc[best, "run_id"]).params()
    assert saved.model.max_seq_length == best and saved.training.max_steps == 2   # the trial's params, resolved
    # for a script: resuming the finished sweep runs nothing and prints its result as JSON alone
    assert cli.main(["sweep", "--resume", folder.name, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sweep_id"] == folder.name and result["best"]["run_id"] == table.loc[best, "run_id"]
    assert sorted(t["status"] for t in result["trials"]) == ["failed", "finished", "finished"]
    # the notebook shows the same table and best trial, headless
    out_nb = tmp_path / "sweep_results.ipynb"
    pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "sweep_results.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"sweep_id": folder.name}, cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
    shown = out_nb.read_text(encoding="utf-8")
    assert table.loc[best, "run_id"] in shown and "exceed max_seq_length=256" in shown


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_and_runs_only_the_remaining_trials(tmp_path, tiny_model_dir):
    path = write_sweep(tmp_path, "resume", n_trials=3, set={**FAST, "max_steps": 2}, pruner={"type": "none"},
                       space={"learning_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2}},
                       sampler={"type": "random", "seed": 1})

    def ctrl_c_after_two(study, trial):
        if len(study.trials) == 2:
            raise KeyboardInterrupt

    with pytest.raises(RunError, match="interrupted after 2 trial.*polo sweep --resume") as e:
        sweeps.run_sweep(path, callbacks=[ctrl_c_after_two], **QUIET)
    sweep_id = str(e.value).split()[1]
    first = sweeps.results_table(sweeps.load_study(sweep_id))
    assert list(first["status"]) == ["finished", "finished"]
    result = sweeps.run_sweep(resume=sweep_id, **QUIET)
    assert list(result.table["trial"]) == [0, 1, 2] and (result.table["status"] == "finished").all()
    assert list(result.table["run_id"][:2]) == list(first["run_id"])  # the first two were not run again
    assert len(runs.registry()) == 3
    again = sweeps.run_sweep(resume=sweep_id, **QUIET)                  # nothing left: nothing runs
    assert len(again.table) == 3 and len(runs.registry()) == 3


@pytest.mark.slow
def test_the_pruner_stops_a_trial_whose_first_eval_loss_is_worst(tmp_path, tiny_model_dir, record_agrees):
    """A crafted grid: a learning rate that learns (5e-3), then one that cannot move the weights
    (1e-9): at the first report (step 2) its eval loss is above the finished trial's, so the
    median pruner stops it there."""
    path = write_sweep(tmp_path, "prune", n_trials=2, space={
        "learning_rate": {"type": "categorical", "choices": [5e-3, 1e-9]}},
        sampler={"type": "grid", "seed": 1}, pruner={"type": "median", "n_startup_trials": 1})
    result = sweeps.run_sweep(path, **QUIET)
    table = result.table.set_index("params_learning_rate")
    assert list(result.table["params_learning_rate"]) == [5e-3, 1e-9], "the grid order this test relies on"
    assert table.loc[5e-3, "status"] == "finished" and table.loc[1e-9, "status"] == "pruned"
    pruned = runs.lookup(table.loc[1e-9, "run_id"])
    assert pruned.manifest()["status"] == "pruned" and pruned.manifest()["pruned_at_step"] == 2
    assert pruned.summary().training.steps == 2 and pruned.summary().sweep.status == "pruned"
    assert runs.registry().loc[pruned.id, "status"] == "pruned"
    record_agrees(pruned)
    record_agrees(runs.lookup(table.loc[5e-3, "run_id"]))
    study = sweeps.load_study(result.sweep_id)
    assert study.trials[1].intermediate_values[2] > study.trials[0].intermediate_values[2]


ALIGN = {"align.method": "grpo", "align.max_steps": 2, "align.num_generations": 2, "align.max_new_tokens": 8,
         "align.limit": 2, "align.save_steps": 2, "align.rewards": {"length": 1.0}}


def test_a_sweep_over_align_fields_aligns_each_trial_and_scores_the_aligned_model(tmp_path, tiny_model_dir):
    """align.* searched (the section in 'set'): each trial trains, aligns with its own value and evaluates the
    aligned model; its objective is the held-out figure of that model, as its run folder records it."""
    path = write_sweep(tmp_path, "aligns", n_trials=2, set={**FAST, "max_steps": 2, **ALIGN},
                       space={"align.learning_rate": {"type": "categorical", "choices": [5e-3, 1e-4]}},
                       objective={"metric": "chrf"}, sampler={"type": "grid", "seed": 0}, pruner={"type": "none"})
    result = sweeps.run_sweep(path, **QUIET)
    table = result.table.set_index("params_align.learning_rate")
    assert sorted(table.index) == [1e-4, 5e-3] and (table["status"] == "finished").all(), result.table.to_string()
    for rate, row in table.iterrows():
        run = runs.lookup(row["run_id"])
        stages = run.manifest()["stages"]
        assert [stages[s]["status"] for s in ("train", "align", "evaluate")] == ["finished"] * 3
        assert run.params().align.learning_rate == rate and run.adapter == run.aligned_adapter
        summary = run.summary()
        assert summary.align.steps == 2 and summary.evaluation.id == run.evaluation().id
        assert row["objective"] == pytest.approx(run.evaluation().metrics()["metrics"]["chrf"]["tuned"])
        assert "sft" in pd.read_json(run.evaluation().path / "predictions.jsonl", lines=True).columns


@pytest.mark.slow
def test_ray_runs_two_trials_on_a_local_instance_into_the_same_folders(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    path = write_sweep(tmp_path, "ray", n_trials=2, set={**FAST, "max_steps": 2},
                       space={"learning_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2}},
                       pruner={"type": "none"}, ray={"cpus_per_trial": 1})
    try:
        result = sweeps.run_sweep(path, engine="ray", **QUIET)
    except RunError as e:
        if "Ray could not start" in str(e):
            pytest.skip(f"Ray cannot start on this machine: {e}")
        raise
    table = result.table
    assert len(table) == 2 and (table["status"] == "finished").all(), table.to_string()
    assert table["objective"].notna().all() and result.best["run_id"] in set(table["run_id"])
    reg = runs.registry()
    for run_id in table["run_id"]:
        assert reg.loc[run_id, "status"] == "finished" and reg.loc[run_id, "params"].startswith("ray-t")
        summary = json.loads((paths.runs_dir() / run_id / "summary.json").read_text())
        assert summary["sweep"]["value"] == pytest.approx(table.set_index("run_id").loc[run_id, "objective"])
    assert (result.folder / "plots" / "history.png").is_file() and (result.folder / "ray").is_dir()


def test_a_ray_trial_stopped_by_asha_is_recorded_as_pruned_with_its_time(tmp_path):
    """Ray ends an ASHA-stopped worker between evaluations, so its record still says 'running'
    with no time: the study gets it as pruned, timed from its start to its last evaluation."""
    import optuna

    sweep = sweeps.load(write_sweep(tmp_path, n_trials=1,
                                    space={"learning_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2}}))
    study = optuna.create_study(study_name="s", direction=sweep.direction)
    record = {"number": 0, "params": {"learning_rate": 1e-3}, "started": "2026-11-30T07:51:59+00:00",
              "status": "running", "run_id": None, "value": None, "error": None, "seconds": 0.0,
              "evaluations": [[2, 1.5], [4, 1.4]],
              "updated": __import__("datetime").datetime.fromisoformat("2026-11-30T07:54:17+00:00").timestamp()}
    sweeps.add_ray_trial(study, record, sweeps.distributions(sweep.spec.space), sweep)
    table = sweeps.results_table(study)
    assert table.loc[0, "status"] == "pruned" and table.loc[0, "seconds"] == pytest.approx(138.0)
    assert study.trials[0].intermediate_values == {2: 1.5, 4: 1.4}


def test_trials_a_killed_sweep_left_running_are_failed_as_interrupted_and_run_again(tmp_path):
    """A sweep killed mid-trial leaves that trial running in study.db and in its run folder:
    resuming fails both (interrupted), and the trial does not count toward n_trials. The last
    point of a grid, too (closing it must not ask the grid sampler to stop a loop)."""
    sweep = sweeps.load(write_sweep(tmp_path, n_trials=2, sampler={"type": "grid", "seed": 0},
                                    space={"lora_r": {"type": "categorical", "choices": [4, 8]}}))
    sweep_id, folder = sweeps.open_folder(sweep, "optuna")
    study = sweeps.open_study(sweep, sweep_id, folder, resume=False)
    study.optimize(lambda t: float(sweeps.suggest(t, sweep.spec.space)["lora_r"]), n_trials=1)
    killed = study.ask()
    values = sweeps.suggest(killed, sweep.spec.space)
    run = runs.open_run(sweeps.trial_params(sweep, values, killed.number), stage="train")
    killed.set_user_attr("run_id", run.id)
    assert sweeps.close_interrupted(sweep_id, folder) == 1
    study = sweeps.load_study(sweep_id)
    table = sweeps.results_table(study)
    assert list(table["status"]) == ["finished", "failed"] and table.loc[1, "run_id"] == run.id
    assert table.loc[1, "error"] == "interrupted (the sweep stopped during this trial)"
    assert sweeps.counted_trials(study) == 1                                   # it runs again on resume
    assert run.manifest()["status"] == "failed" and "interrupted" in run.manifest()["error"]["message"]
    assert sweeps.close_interrupted(sweep_id, folder) == 0                     # nothing left running


def test_last_eval_loss_is_the_eval_loss_whatever_the_direction():
    """Intermediate values carry the study's sign (pruners compare in it); the table undoes it."""
    import optuna
    from optuna.distributions import FloatDistribution

    for direction, stored in (("minimize", 2.5), ("maximize", -2.5)):
        study = optuna.create_study(direction=direction)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-4, 1e-2)}, value=40.0,
            intermediate_values={2: stored}, user_attrs={"run_id": "r"}))
        assert sweeps.results_table(study)["last_eval_loss"].tolist() == [2.5], direction
