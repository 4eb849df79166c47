"""Runs as a workflow: registry, reports, preflight, queues, chained stages, compare_runs."""
import functools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import torch
import yaml

from polo_lib import cli, compare, device, model, params, paths, pipeline, preflight, queues, reports, runs
from polo_lib.errors import ParamsError, RunError

pytestmark = pytest.mark.slow
QUIET = {"log": lambda *a: None}


def test_run_ids_are_time_params_and_hash_and_never_reused():
    cfg = params.load("smoke")
    a, b = runs.open_run(cfg), runs.open_run(cfg)
    assert a.id != b.id and a.id.split("-")[2:4] == ["smoke", cfg.short_hash()]
    assert (a.path / "params.yaml").is_file() and a.manifest()["status"] == "created"


def test_latest_means_the_newest_polo_run_not_a_sweep_trial_or_queue_step_in_every_command(tmp_path, capsys):
    cfg = params.load("smoke")
    plain, step, trial, failed = (runs.open_run(cfg) for _ in range(4))
    plain.update_manifest(status="finished")
    step.update_manifest(status="finished", queue={"queue_id": "q", "item": "a"})
    trial.update_manifest(status="finished", sweep={"sweep_id": "s", "trial": 0})
    failed.fail("DataError: bad")
    assert runs.lookup().id == runs.lookup("latest").id == runs.lookup("latest:run").id == plain.id
    assert runs.lookup("latest:sweep").id == trial.id and runs.lookup("latest:queue").id == step.id
    assert runs.lookup("latest:any").id == trial.id
    assert runs.lookup("latest", status=None).id == failed.id  # open_run, report: any status
    assert list(runs.registry()["kind"]) == ["run", "queue", "sweep", "run"]
    # a run folder's path, as tab completion gives it (trailing slash, relative or absolute)
    assert runs.lookup(f"{trial.path}/").id == trial.id
    assert runs.lookup(os.path.relpath(step.path)).id == step.id
    with pytest.raises(RunError, match="is not a run folder"):
        runs.lookup(str(tmp_path))
    with pytest.raises(RunError, match="'latest:sweeps': unknown kind"):
        runs.lookup("latest:sweeps")
    # the same in every command (runs.lookup): here polo report, which takes any status
    assert cli.main(["report", "latest:sweep"]) == 0 and str(trial.path) in capsys.readouterr().out
    assert cli.main(["report", str(step.path)]) == 0 and str(step.path) in capsys.readouterr().out


def test_latest_with_only_sweep_trials_says_where_the_runs_are():
    trial = runs.open_run(params.load("smoke"))
    trial.update_manifest(status="finished", sweep={"sweep_id": "s", "trial": 0})
    with pytest.raises(RunError, match=r"no finished run made by polo run or a notebook .*\(there are 1 sweep "
                                       r"run\(s\): latest:sweep\)"):
        runs.lookup()


def test_registry_lists_failed_running_and_damaged_runs(capsys):
    cfg = params.load("smoke")
    ok, failed, running, bad_summary, no_manifest, bad_manifest = (runs.open_run(cfg) for _ in range(6))
    ok.update_manifest(status="finished")
    ok.update_summary(training={"eval_loss_best": 1.5, "steps": 6})
    failed.fail("DataError: bad", "train.ipynb, cell 4")
    running.start_stage("train")
    # three ways a run folder gets damaged: half-written summary, lost manifest, half-written manifest
    (bad_summary.path / "summary.json").write_text("{not json", encoding="utf-8")
    (no_manifest.path / "manifest.json").unlink()
    (bad_manifest.path / "manifest.json").write_text('{"status": "finis', encoding="utf-8")
    assert not (no_manifest.path / "manifest.json").exists()
    reg = runs.registry()  # lists every folder, never raises on a damaged one
    assert runs.lookup().id == ok.id and runs.lookup("latest", status=None).id == no_manifest.id
    damaged = [bad_summary, no_manifest, bad_manifest]
    assert set(reg.index) == {r.id for r in (ok, failed, running, *damaged)}
    assert reg.loc[ok.id, "status"] == "finished" and reg.loc[ok.id, "eval_loss_best"] == 1.5
    assert pd.isna(reg.loc[ok.id, "problem"])
    assert reg.loc[failed.id, "status"] == "failed" and "DataError: bad" in reg.loc[failed.id, "problem"]
    assert reg.loc[running.id, "status"] == "running"
    assert reg.loc[bad_summary.id, "status"] == "damaged"
    assert reg.loc[bad_summary.id, "problem"].startswith("summary.json unreadable (JSONDecodeError")
    assert reg.loc[no_manifest.id, "status"] == "damaged" and reg.loc[no_manifest.id, "problem"] == "no manifest.json"
    assert reg.loc[bad_manifest.id, "status"] == "damaged"
    assert reg.loc[bad_manifest.id, "problem"].startswith("manifest.json unreadable (JSONDecodeError")
    assert list(runs.registry("finished").index) == [ok.id]
    assert set(runs.registry("damaged").index) == {r.id for r in damaged}
    # `polo list` shows the damaged runs with their problem instead of stopping at them
    assert cli.main(["list", "--status", "damaged"]) == 0
    out = capsys.readouterr().out
    assert all(r.id in out for r in damaged) and "no manifest.json" in out


def test_each_evaluation_keeps_its_folder_a_failed_one_is_listed_and_never_the_latest():
    """The bookkeeping of evaluations (the model side is in test_evaluate): ids, statuses, the
    summary's latest and list, the report's table, lookups by id prefix."""
    run = runs.open_run(params.load("smoke"))
    (run.adapter / "adapter_config.json").write_text("{}", encoding="utf-8")  # start_evaluation wants an adapter

    def evaluate(limit: int, chrf: float | None) -> runs.Evaluation:
        cfg = params.load("smoke", overrides={"evaluation.limit": limit})
        runs.open_run(cfg, run.id, stage="evaluate", may_differ=("evaluation",))
        evaluation = runs.start_evaluation(run, cfg)
        assert evaluation.entry()["status"] == "running" and evaluation.params().evaluation.limit == limit
        if chrf is None:  # the stage dies, as a failing notebook cell ends it
            run.fail("OutOfMemoryError: CUDA out of memory", "evaluate.ipynb, cell 8")
        else:
            (evaluation.path / "metrics.json").write_text(json.dumps(
                {"split": "test", "examples": limit, "metrics": {"chrf": {"base": 1.0, "tuned": chrf}}}))
            runs.finish_stage(run, "evaluate")
        reports.conclude(run)
        return evaluation

    first, failed, third = evaluate(2, 5.0), evaluate(1, None), evaluate(3, 7.0)
    assert len({first.id, failed.id, third.id}) == 3 and first.id.endswith("-test-2")
    assert [e.entry()["status"] for e in run.evaluations()] == ["finished", "failed", "finished"]
    assert run.evaluation().id == third.id and run.evaluation(first.id).id == first.id
    with pytest.raises(RunError, match="several evaluations start with"):
        run.evaluation(first.id[:8])
    summary = run.summary()
    assert [(e.id, e.tuned["chrf"]) for e in summary.evaluations] == [(first.id, 5.0), (third.id, 7.0)]
    assert summary.evaluation.id == third.id and runs.registry().loc[run.id, "chrf_tuned"] == 7.0
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert "## Evaluation (test, 3 examples)" in report and f"| {failed.id} | failed | test | 1 |  |" in report
    assert "differ from the run's params.yaml in: limit 3 (params.yaml: 2)" in report
    assert "chrf" in (first.path / "metrics.json").read_text()  # earlier evaluations stay as they were


def test_polo_list_reads_like_a_tool_table_sized_to_the_terminal_and_json_for_scripts(capsys, monkeypatch):
    cfg = params.load("smoke")
    done, failed = runs.open_run(cfg), runs.open_run(cfg)
    done.update_manifest(status="finished")
    done.update_summary(training={"steps": 13, "eval_loss_best": 1.2671234, "loss_last": 1.5})
    failed.fail("DataError: " + "a very long message " * 100, "train.ipynb, cell 4")
    for columns in (80, 200):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert cli.main(["list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(map(len, lines[:-1])) <= columns and "NaN" not in "\n".join(lines) and "None" not in "\n".join(lines)
        assert lines[0].split()[:3] == ["run_id", "kind", "status"] and len(lines) == 4  # header, 2 runs, note
        assert "polo list --json" in lines[-1]
        row = next(line for line in lines if line.startswith(done.id)).split()
        assert row[:5] == [done.id, "run", "finished", "smoke", "13"]  # steps an integer, not 13.0
    assert "1.267" in row and "a very long message a very" in "\n".join(lines) and "..." in "\n".join(lines)
    assert cli.main(["list", "--json"]) == 0
    listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[done.id]["steps"] == 13 and listed[done.id]["chrf_tuned"] is None
    assert listed[failed.id]["problem"].startswith("failed: DataError: a very long")
    assert cli.main(["list", "--status", "pruned"]) == 0
    assert capsys.readouterr().out.startswith("no pruned runs in ")
    with pytest.raises(SystemExit) as e:
        cli.main(["list", "--status", "bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus' (choose from 'running', 'finished'" in capsys.readouterr().err
    assert cli.main(["report", done.id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["training"]["steps"] == 13 and out["manifest"]["status"] == "finished"


def test_table_cells_are_blank_for_missing_integers_for_whole_numbers_and_cut_with_a_pointer():
    table = pd.DataFrame({"item": ["a", "bad"], "steps": [13.0, float("nan")], "loss": [1.23456, None],
                          "error": [None, "ParamsError: " + "x" * 200]})
    text = reports.text_table(table, width=60, limit=30, note="the whole table: results.csv")
    assert "nan" not in text.lower() and "13.0" not in text and " 13 " in text.splitlines()[1] + " "
    assert "1.235" in text and "ParamsError: xxxxxxxxxxxxxx..." in text
    assert max(map(len, text.splitlines()[:-1])) <= 60
    assert text.splitlines()[-1] == "(long cells cut; the whole table: results.csv)"
    md = reports.md_table(table.to_dict("records"), list(table.columns))
    assert "nan" not in md and "| a | 13 | 1.235 |  |" in md


def test_two_overrides_after_one_set_are_refused_naming_how_to_write_them(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "smoke", "--set", "max_steps=2", "learning_rate=1e-3", "lora_r=4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: learning_rate=1e-3 lora_r=4. Each override needs its own --set: " \
           "--set learning_rate=1e-3 --set lora_r=4" in err
    assert not paths.runs_dir().exists()
    with pytest.raises(SystemExit):  # anything else unknown: argparse's own words, no hint
        cli.main(["run", "smoke", "--bogus", "train"])
    assert "unrecognized arguments: --bogus train\n" in capsys.readouterr().err


def test_command_help_names_every_positional_and_shows_defaults(capsys):
    import argparse

    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subcommands.choices.items():
        for action in parser._actions:
            assert action.help, (name, action.dest)  # every positional and option says what it is
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "(default: False)" not in text, name
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "port to listen on (default: 8000)" in " ".join(capsys.readouterr().out.split())


def test_polo_list_and_report_work_from_the_folder_alone(capsys):
    """Also for a run trained before baseline_eval_seconds: its train_runtime is read back and each
    time figure says in the report what it measures."""
    from polo_lib.train import TIME_FIGURES

    cfg = params.load("smoke")
    run = runs.open_run(cfg)
    run.update_summary(training={"loss_first": 3.0, "loss_last": 2.0, "early_stopped": True,
                                 "early_stopped_at_step": 4, "best_checkpoint": "checkpoint-2",
                                 "train_seconds": 755.5, "train_runtime": 311.29})
    assert cli.main(["report", run.id]) == 0
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert f"# Run {run.id}" in report and "| loss_last | 2 |" in report
    assert run.summary().training.train_seconds == 755.5
    assert f"| train_seconds | 755.5 | {TIME_FIGURES['train_seconds']} |" in report
    assert f"| train_runtime | 311.3 | {TIME_FIGURES['train_runtime']} |" in report
    assert "early stopping fired at step 4" in report and "training.learning_rate" in report
    assert cli.main(["list"]) == 0 and run.id in capsys.readouterr().out


def test_preflight_passes_for_smoke_and_reports_every_check(tiny_model_dir):
    report = preflight.run_checks(params.load("smoke"))
    assert report.ok, str(report)
    assert {"params", "raw data", "model", "memory", "chat template, masking, lengths"} <= set(report.table().index)
    assert "'<|assistant|>\\n'" in report.table().loc["chat template, masking, lengths", "detail"]


def test_preflight_warns_when_warmup_is_a_quarter_of_the_run(tiny_model_dir):
    report = preflight.run_checks(params.load("smoke", {"max_steps": 24, "warmup_steps": 0.3}))
    row = report.table().loc["chat template, masking, lengths"]
    assert report.ok and row["status"] == "warn" and "warmup is 7 of 24 steps" in row["detail"]


def test_preflight_catches_a_missing_target_module(tiny_model_dir):
    report = preflight.run_checks(params.load("smoke", {"lora.target_modules": ["q_proj", "c_attn"]}))
    assert not report.ok
    assert "c_attn" in report.table().loc["architecture and LoRA targets", "detail"]
    assert cli.main(["preflight", "smoke", "--set", "lora.target_modules=[q_proj, c_attn]"]) == 1


def test_preflight_catches_a_template_without_markers(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken-template"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    (broken / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    report = preflight.run_checks(params.load("smoke", {"model.model_name": str(broken)}))
    assert not report.ok
    assert "could not derive the chat markers" in report.table().loc["chat template, masking, lengths", "detail"]


def test_preflight_says_whether_4bit_applies_on_this_cpu(tiny_model_dir, monkeypatch):
    """NF4 where bitsandbytes' CPU backend runs it (this machine, as make setup installs it); a
    warning with the reason where it does not (a CPU without bitsandbytes, described)."""
    cfg = params.load("smoke", {"model.load_in_4bit": True})
    row = preflight.run_checks(cfg).table().loc["precision and device"]
    assert row["status"] == "ok" and row["detail"].startswith("4-bit NF4 + float32 on cpu"), row["detail"]
    monkeypatch.setattr(device, "describe", lambda: device.PROFILES["cpu-no-bitsandbytes"])
    row = preflight.run_checks(cfg).table().loc["precision and device"]
    assert row["status"] == "warn" and "bitsandbytes is not installed" in row["detail"]
    assert "loading float32 weights instead" in row["detail"]


def write_queue(tmp_path, body):
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_queue_records_a_failing_variant_and_goes_on(tiny_model_dir, tmp_path, record_agrees, capsys):
    path = write_queue(tmp_path, {"base": "smoke", "stages": ["prepare", "train"], "set": {"max_steps": 3},
                                  "variants": [{"name": "a", "set": {"learning_rate": 1e-3}},
                                               {"name": "bad", "set": {"lora_dropout": 1.5}},
                                               {"name": "b", "set": {"lora_r": 4}}]})
    # through the command line, as a script would: --json keeps stdout for the result alone; each run's stages
    # in this process (the notebooks' own path is tests/test_train_notebook.py's)
    assert cli.main(["queue", str(path), "--json", "--in-process"]) == 1  # not every variant finished
    out = json.loads(capsys.readouterr().out)
    table, folder = pd.DataFrame(out["runs"]), Path(out["folder"])
    assert out["all_finished"] is False and out["runs"][1]["run_id"] is None  # null, not NaN
    assert list(table["status"]) == ["finished", "failed", "finished"]
    assert "lora_dropout" in table.loc[1, "error"]
    assert (folder / "results.csv").is_file() and (folder / "report.md").is_file()
    assert table.loc[0, "run_id"].split("-")[2:4] == ["smoke", "a"]
    assert runs.lookup("latest:queue").id == table.loc[2, "run_id"]  # queue steps are not `latest`
    assert runs.lookup(table.loc[0, "run_id"]).manifest()["queue"] == {"queue_id": folder.name, "item": "a"}
    for run_id in table["run_id"].dropna():
        record_agrees(runs.lookup(run_id))

    # compare_runs over the two finished runs (a: another learning rate, b: another rank), through papermill
    out = tmp_path / "compare.ipynb"
    pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "compare_runs.ipynb"), str(out), kernel_name="python3",
                        cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
    executed = json.loads(out.read_text(encoding="utf-8"))
    text = json.dumps(executed)
    assert all(r in text for r in table["run_id"].dropna())
    assert sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", [])) >= 2
    chosen = compare.select()
    diff = compare.params_diff(chosen)
    assert {"training.learning_rate", "lora.r"} <= set(diff.index)
    assert compare.best(compare.metrics_table(chosen), "eval_loss_best").name in set(table["run_id"])


def test_queue_and_sweep_files_are_found_by_name_beside_each_other():
    """params/queues/ and params/sweeps/: a name is enough, a typo gets the closest name."""
    from polo_lib import sweeps

    assert queues.load("cpu_two_stage").path == paths.QUEUES_DIR / "cpu_two_stage.yaml"
    assert sweeps.resolve_file("cpu_lr") == paths.SWEEPS_DIR / "cpu_lr.yaml"
    with pytest.raises(ParamsError, match=r"queue file 'cpu_tw_stage' not found. Did you mean 'cpu_two_stage'\? "
                                          r"Use a name in params/queues/"):
        queues.load("cpu_tw_stage")
    with pytest.raises(ParamsError, match=r"sweep file 'cpulr' not found. Did you mean 'cpu_lr'"):
        sweeps.resolve_file("cpulr")


def test_queue_file_mistakes_are_reported_before_any_run(tmp_path):
    path = write_queue(tmp_path, {"base": "smoke", "variant": [], "stages": "train"})
    with pytest.raises(ParamsError, match=r"(?s)unknown key 'variant'. Did you mean 'variants'.*exactly one of"):
        queues.load(path)
    assert not paths.runs_dir().exists()


def test_pipeline_stage_two_starts_from_stage_one_adapter(tiny_model_dir, tmp_path):
    path = write_queue(tmp_path, {"base": "smoke", "stages": ["prepare", "train"], "set": {"max_steps": 3},
                                  "pipeline": [{"name": "stage1"}, {"name": "stage2", "set": {"learning_rate": 1e-3}}]})
    table, _ = queues.run_queue(path, **QUIET, execute=functools.partial(pipeline.run_pipeline, in_process=True))
    assert list(table["status"]) == ["finished", "finished"]
    first, second = table["run_id"]
    assert runs.lookup(second).params().run.init_adapter == first
    assert any("start from" in n for n in runs.lookup(second).manifest()["model_notes"])
    # the weights stage 2 starts from are exactly stage 1's saved adapter
    from safetensors.torch import load_file

    saved = load_file(str(runs.lookup(first).adapter / "adapter_model.safetensors"))
    lm = model.load(params.load("smoke", overrides={"run.init_adapter": first}))
    state = {k: v for k, v in lm.model.state_dict().items() if "lora_" in k}
    assert len(state) == len(saved)
    for key, value in saved.items():
        own = next(v for k, v in state.items() if k.replace(".default", "") == key)
        assert torch.equal(own, value), key


def test_init_adapter_that_does_not_exist_is_named(tiny_model_dir):
    with pytest.raises(model.ModelError, match="init_adapter 'no-such-run'"):
        model.load(params.load("smoke", overrides={"run.init_adapter": "no-such-run"}))
