"""Task metrics during training (evaluation.during_training), early stopping on one of them, and the
experiment trackers, on one real smoke run (tiny model, real Unsloth + TRL, real MLflow, Trackio and
W&B offline stores, each read back): the same run answers every question, so the module pays for
one training and one evaluation."""
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from polo_lib import params, registry, runs, task_eval, trackers, train
from polo_lib.errors import ParamsError
from polo_lib.sweeps import spec as sweep_spec

pytestmark = pytest.mark.slow

TASK = [m.log_key for m in registry.during_training()]
# Patience 1 on the Hangul share: the tiny model's answers to 2 validation paragraphs go from 0 (step 0)
# to 0.5 (3) to 1.0 (6) to 0.91 (9) Hangul while its eval_loss keeps falling, so training stops at 9 of
# 12 because of the task metric alone.
OVERRIDES = {"training.max_steps": 12, "training.early_stopping_patience": 1, "training.early_stopping_threshold": 0,
             "training.early_stopping_metric": "hangul_share",
             "training.report_to": ["tensorboard", "mlflow", "trackio", "wandb"],
             "evaluation.during_training": 2, "evaluation.during_training_max_new_tokens": 16}


WANDB_SITE = Path(sys.prefix) / "wandb"  # make setup installs W&B there, out of every other import's way


@pytest.fixture(scope="module")
def scored_run(tiny_model_dir, tmp_path_factory):
    """A smoke run trained with task metrics and early stopping on the Hangul share, logged to every
    tracker, then evaluated, by tests/scored_run.py in a process of its own (the only one where W&B
    imports): (params, run, MLflow tracking URI, the W&B offline records)."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None and not (WANDB_SITE / "wandb").is_dir():
        pytest.fail(f"W&B is neither importable nor in {WANDB_SITE}: run `make setup`")
    root = tmp_path_factory.mktemp("scored")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "TRACKIO_"))}
    env.update(POLO_OUTPUTS=str(root / "outputs"), POLO_PROCESSED_DIR=str(root / "processed"))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("scored_run.py")), json.dumps(OVERRIDES),
                           str(WANDB_SITE)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs.lookup(done.stdout.strip().splitlines()[-1])
    wandb = json.loads((root / "outputs" / "wandb_records.json").read_text(encoding="utf-8"))
    uri = f"sqlite:///{(root / 'outputs' / 'mlflow' / 'mlflow.db').resolve()}"
    return params.load("smoke", overrides=OVERRIDES), run, uri, wandb


def test_task_metrics_are_logged_at_every_evaluation(scored_run):
    cfg, run, _, _ = scored_run
    log = train.read_train_log(run.logs / "train_log.csv")
    evals = log.dropna(subset=["eval_loss"])
    assert list(evals["step"]) == [0, 3, 6, 9]
    for key in TASK:  # every evaluation, the base model's at step 0 included
        assert evals[key].notna().all() or key == "eval_term_coverage", key
    assert ((evals["eval_chrf"] >= 0) & (evals["eval_chrf"] <= 100)).all()
    assert ((evals["eval_hangul_share"] >= 0) & (evals["eval_hangul_share"] <= 1)).all()
    assert (evals["eval_task_seconds"] > 0).all()
    assert log.dropna(subset=["loss"])[TASK].isna().all().all()  # training rows carry none
    # the answers behind each score, one line per evaluation
    lines = [json.loads(x) for x in (run.logs / "task_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["step"] for x in lines] == [0, 3, 6, 9] and all(len(x["answers"]) == 2 for x in lines)
    assert [x["chrf"] for x in lines] == pytest.approx(list(evals["eval_chrf"]))


def test_the_live_chart_shows_the_task_metrics_beside_the_loss(scored_run):
    from polo_lib import plots

    _, run, _, _ = scored_run
    log = train.read_train_log(run.logs / "train_log.csv")
    fig = plots.loss_curve(log)
    assert len(fig.axes) == 2
    assert fig.axes[1].get_legend_handles_labels()[1] == ["chrF", "SARI", "Hangul share %", "glossary coverage %"]
    assert len(plots.loss_curve(log[train.LOG_COLUMNS]).axes) == 1  # a log without them: the loss alone


def test_a_metric_added_in_one_place_is_scored_shown_plotted_and_reported(scored_run, monkeypatch):
    """tests/extra_metric.py is one registry.Metric; tests/scored_run.py registered it before training. Here
    (registered again in this process, as a user's notebook would) nothing else was told about it."""
    import io

    import extra_metric

    from polo_lib import plots, progress, reports

    metric = extra_metric.METRIC
    monkeypatch.setitem(registry.METRICS, metric.name, metric)
    _, run, _, _ = scored_run
    log = train.read_train_log(run.logs / "train_log.csv")
    evals = log.dropna(subset=["eval_loss"])
    assert evals[metric.log_key].between(0, 1).all() and len(evals) == 4  # scored at every evaluation
    # ...on the answers behind it
    lines = [json.loads(x) for x in (run.logs / "task_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [list(x["answers"].values()) for x in lines]
    assert list(evals[metric.log_key]) == pytest.approx(
        [extra_metric.finished_share(registry.Texts([""] * len(a), a, [""] * len(a))) for a in answers])
    # the terminal line
    out = io.StringIO()
    progress.View(out, tty=False).update({"stage": "train", "done": 3, "total": 9, "eval_step": 3, "eval_loss": 1.5,
                                          metric.log_key: 0.5, "eval_chrf": 7.0})
    assert "chrF 7.000, finished 0.500" in out.getvalue()
    # the chart
    legend = plots.loss_curve(log).axes[1].get_legend_handles_labels()[1]
    assert legend[-1] == "answers that end a sentence %"
    # the summary, the headline and the evaluation's table in report.md
    assert {f"{metric.name}_first", f"{metric.name}_last"} <= set(run.summary().training.task_metrics)
    assert f"{metric.name} during training:" in "\n".join(reports.headline(run))
    assert metric.name in run.summary().evaluation.tuned
    assert f"| {metric.name} |" in (run.path / "report.md").read_text(encoding="utf-8")


def test_task_metrics_reach_tensorboard(scored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _, _ = scored_run
    events = EventAccumulator(str(run.logs / "tensorboard")).Reload()
    assert {"eval/loss", "eval/chrf", "eval/sari", "eval/hangul_share"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval/chrf")] == [0, 3, 6, 9]


def test_early_stopping_follows_the_task_metric_not_the_loss(scored_run):
    """The Hangul share fell at step 9 while eval_loss still fell: training stopped there, and the best
    checkpoint is the task metric's best (step 6), not the lowest loss's (step 9)."""
    _, run, _, _ = scored_run
    log = train.read_train_log(run.logs / "train_log.csv").dropna(subset=["eval_loss"]).set_index("step")
    assert log.loc[9, "eval_loss"] < log.loc[6, "eval_loss"]  # the loss alone would have gone on
    assert log.loc[9, "eval_hangul_share"] < log.loc[6, "eval_hangul_share"]
    t = run.summary().training
    assert t.early_stopped and t.early_stopped_at_step == 9 and t.steps == 9
    assert t.early_stopping_metric == "eval_hangul_share" and t.best_checkpoint == "checkpoint-6"
    assert t.best_metric == pytest.approx(log["eval_hangul_share"].loc[[3, 6, 9]].max())
    assert t.eval_loss_best == pytest.approx(log.loc[9, "eval_loss"])
    assert t.task_metrics["chrf_first"] == pytest.approx(log.loc[0, "eval_chrf"])
    assert "chrf during training:" in "\n".join(__import__("polo_lib.reports").reports.headline(run))


def test_mlflow_holds_the_run_params_metrics_and_name(scored_run):
    """The store a smoke run wrote, read back through MLflow's own client: the run id as the run
    name, the trainer's metrics per step (task metrics included), the params, and the summary and
    evaluation figures logged when each stage ended."""
    import mlflow

    _, run, uri, _ = scored_run
    assert uri.startswith("sqlite:///") and uri.endswith("outputs/mlflow/mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("polo")
    found = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{run.id}'")
    assert len(found) == 1
    tracked = found[0]
    assert run.manifest()["trackers"]["mlflow"]["run_id"] == tracked.info.run_id
    assert tracked.data.params["params.training.learning_rate"] == str(run.params().training.learning_rate)
    assert tracked.data.params["params.evaluation.during_training"] == "2"
    chrf = client.get_metric_history(tracked.info.run_id, "eval_chrf")
    assert sorted(m.step for m in chrf) == [0, 3, 6, 9]
    summary = run.summary()
    metrics = tracked.data.metrics
    assert metrics["summary.training.eval_loss_best"] == pytest.approx(summary.training.eval_loss_best)
    assert metrics["summary.evaluation.tuned.chrf"] == pytest.approx(summary.evaluation.tuned["chrf"])
    assert tracked.info.status == "FINISHED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], url: str, log: Path, env: dict | None = None, cwd: Path | None = None):
    """A tracker's UI started as the README says, until `url` answers (at most 120 s: a busy 2-core
    machine takes 10-20 s to start MLflow's); stopped with everything it started when the block ends."""
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)  # its own process group: its workers go with it
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None, f"{command[:2]} exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{url} did not answer in 120 s: {log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return response.read()


def test_the_mlflow_ui_starts_on_the_run_store_and_serves_the_run(scored_run, tmp_path):
    """The README's `mlflow ui --backend-store-uri ...` (on a free port, one worker) against the run's store:
    the web app (its page and script) and the run that the run's page shows, over HTTP."""
    _, run, uri, _ = scored_run
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
               "--port", url.rsplit(":", 1)[1], "--workers", "1"]
    with serving(command, f"{url}/health", tmp_path / "mlflow-ui.log", cwd=tmp_path):
        page = get(f"{url}/").decode()
        assert "<title>MLflow</title>" in page, page[:500]  # not "Unable to display MLflow UI"
        script = re.search(r'src="(static-files/[^"]+\.js)"', page).group(1)
        assert len(get(f"{url}/{script}")) > 100_000  # the UI's bundle
        tracked = run.manifest()["trackers"]["mlflow"]
        body = json.loads(get(f"{url}/ajax-api/2.0/mlflow/runs/get?run_id={tracked['run_id']}"))
        assert body["run"]["info"]["run_name"] == run.id
        assert body["run"]["info"]["experiment_id"] == tracked["experiment"]


CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver here: `apt-get install chromium "
                                                      "chromium-driver` (.ci/run installs them)")
def test_the_trackio_dashboard_opens_on_the_curves(scored_run, tmp_path):
    """`trackio show --project polo` on the run's store, in Chromium: the first section is the trainer's
    curves, and no chart shows a single summary figure; those are in the run's configuration (its page).
    Screenshots in the test's folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, run, _, _ = scored_run
    port = free_port()
    env = {**os.environ, "TRACKIO_DIR": run.manifest()["trackers"]["trackio"]["dir"], "GRADIO_SERVER_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    with serving([str(Path(sys.executable).with_name("trackio")), "show", "--project", trackers.PROJECT], url,
                 tmp_path / "trackio.log", env=env):
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(f"{url}/?project={trackers.PROJECT}")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".accordion-label"))
            sections = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".accordion-label")]
            browser.save_screenshot(str(tmp_path / "trackio-metrics.png"))
            assert sections[0].startswith(("eval (", "train (")), sections  # not "charts (": one-value bars
            assert "summary." not in browser.find_element(By.TAG_NAME, "body").text
            browser.get(f"{url}/run?project={trackers.PROJECT}&selected_run={run.id}")
            wait.until(lambda d: "summary.evaluation.tuned.chrf" in d.find_element(By.TAG_NAME, "body").text)
            browser.save_screenshot(str(tmp_path / "trackio-run.png"))
        finally:
            browser.quit()
    assert (tmp_path / "trackio-metrics.png").stat().st_size > 10_000


def test_a_task_metric_needs_scoring_during_training():
    with pytest.raises(ParamsError, match=r"early_stopping_metric is 'sari'.*evaluation.during_training is 0"):
        params.load("smoke", overrides={"training.early_stopping_metric": "sari"})
    with pytest.raises(ParamsError, match=r"report_to.*'tensorboard', 'mlflow', 'trackio' or 'wandb'"):
        params.load("smoke", overrides={"training.report_to": "tensorboard,neptune"})
    assert params.load("smoke", overrides={"training.report_to": "tensorboard,mlflow"}).training.report_to == \
        ("tensorboard", "mlflow")


def test_trackio_holds_the_run_metrics_params_and_summary(scored_run, monkeypatch):
    from trackio import sqlite_storage
    from trackio.sqlite_storage import SQLiteStorage

    _, run, _, _ = scored_run
    where = Path(run.manifest()["trackers"]["trackio"]["dir"])
    assert where == run.path.parents[1] / "trackio"  # the outputs folder, not ~/.cache
    monkeypatch.setattr(sqlite_storage, "TRACKIO_DIR", where)  # read where that run's process wrote
    logs = SQLiteStorage.get_logs(trackers.PROJECT, run.id)
    assert sorted(x["train/global_step"] for x in logs if "eval/chrf" in x) == [0, 3, 6, 9]
    assert not [k for x in logs for k in x if k.startswith("summary.")]  # no chart of one value each
    config = SQLiteStorage.get_run_config(trackers.PROJECT, run.id)
    assert config["params.training.early_stopping_metric"] == "hangul_share"
    assert config["summary.evaluation.tuned.chrf"] == pytest.approx(run.summary().evaluation.tuned["chrf"])
    assert config["summary.training.eval_loss_best"] == pytest.approx(run.summary().training.eval_loss_best)


def test_wandb_offline_holds_the_run_metrics_params_and_summary(scored_run):
    """Offline (nothing uploaded): every stage's records under the run id, to be merged by `wandb sync`;
    read back by tests/scored_run.py with W&B's own protobuf records."""
    _, run, _, wandb = scored_run
    assert wandb["files"] == 2  # the train stage, then the evaluate stage, resumed under the same id
    records = wandb["records"]
    assert {"run", "history", "config", "summary"} <= {r["kind"] for r in records}
    assert {r["run_id"] for r in records if r["kind"] == "run"} == {run.id}
    history = [r["items"] for r in records if r["kind"] == "history"]
    assert sorted(h["train/global_step"] for h in history if "eval/hangul_share" in h) == [0, 3, 6, 9]
    config = {k: v for r in records if r["kind"] == "config" for k, v in r["items"].items()}
    assert config["params.evaluation.during_training"] == "2"
    summary = {k: v for r in records if r["kind"] == "summary" for k, v in r["items"].items()}
    assert summary["summary.evaluation.tuned.chrf"] == pytest.approx(run.summary().evaluation.tuned["chrf"])


@pytest.mark.parametrize("tracker,extra", [("mlflow", "mlflow"), ("wandb", "wandb"), ("trackio", "trackio")])
def test_a_tracker_that_is_not_installed_is_refused_naming_its_extra(tracker, extra, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(ParamsError, match=rf"report_to names {tracker}, but .* pip install -e '\.\[{extra}\]'"):
        trackers.trainer_report_to(["tensorboard", tracker], run=None)
    if tracker == "wandb":  # polo preflight says it too, in its own row, before anything loads
        from polo_lib import preflight

        cfg = params.load("smoke", overrides={"training.report_to": ["tensorboard", tracker]})
        row = next(r for r in preflight.run_checks(cfg).rows if r["check"] == "experiment trackers")
        assert row["status"] == preflight.FAIL and f"'.[{extra}]'" in row["detail"]


@pytest.mark.parametrize("metric,higher", [("eval_loss", False), ("chrf", True), ("sari", True),
                                           ("term_coverage", True), ("hangul_share", True)])
def test_early_stopping_directions_come_from_the_metrics_table(metric, higher):
    assert task_eval.greater_is_better(metric) is higher
    assert task_eval.metric_key(metric) == (metric if metric == "eval_loss" else f"eval_{metric}")


@pytest.mark.parametrize("objective,direction,prune_on,sign", [
    ("eval_loss", "minimize", "eval_loss", 1.0),     # loss into a minimizing study: as it is
    ("chrf", "maximize", "eval_loss", -1.0),         # a falling loss is a rising chrF study: flipped
    ("chrf", "maximize", "chrf", 1.0),               # chrF into a maximizing study: as it is
    ("eval_loss", "minimize", "chrf", -1.0),         # higher chrF is a lower-loss study's better: flipped
])
def test_a_sweep_prunes_on_the_metric_it_names_in_its_direction(objective, direction, prune_on, sign):
    sweep = sweep_spec.validate({
        "name": "t", "base": "smoke", "n_trials": 2,
        "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
        "set": {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "evaluation.during_training": 1},
        "objective": {"metric": objective, "prune_on": prune_on}}, origin="test")
    assert sweep.direction == direction
    assert sweep.prune_on == task_eval.metric_key(prune_on) and sweep.sign == sign


def test_the_pruning_callback_reports_the_metric_it_was_given():
    from types import SimpleNamespace

    from polo_lib.sweeps.trial import pruning_callback

    seen, evaluations = [], []
    callback = pruning_callback(lambda step, value: seen.append((step, value)) or value < 2, evaluations, "eval_chrf")
    control = SimpleNamespace(should_training_stop=False)
    for step, chrf in ((0, 9.0), (3, 5.0), (6, 1.0)):  # step 0: the base model's, never reported
        callback.on_evaluate(None, SimpleNamespace(global_step=step), control,
                             metrics={"eval_loss": 1.0, "eval_chrf": chrf})
    assert seen == evaluations == [(3, 5.0), (6, 1.0)]
    assert control.should_training_stop and callback.pruned_at == 6


def test_a_sweep_cannot_prune_on_a_task_metric_never_scored():
    with pytest.raises(ParamsError, match=r"prune_on is 'chrf'.*set evaluation.during_training"):
        sweep_spec.validate({
            "name": "t", "base": "smoke", "n_trials": 2,
            "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
            "set": {"max_steps": 4, "eval_steps": 2, "save_steps": 2},
            "objective": {"metric": "chrf", "prune_on": "chrf"}}, origin="test")


@pytest.mark.parametrize("papers,n,chosen", [
    (["a"] * 6, 3, [0, 1, 2]),                              # one paper: the first n, as always
    (["a"] * 6 + ["b"] * 2, 3, [0, 6, 1]),                  # two: in turn, in the order they appear
    (["a", "a", "b", "c", "c"], 4, [0, 2, 3, 1]),
    (["a", "b"], 5, [0, 1]),                                # fewer than asked: all of them
    ([], 2, []),
])
def test_the_scored_sample_takes_each_paper_in_turn(papers, n, chosen):
    assert task_eval.sample_indices(papers, n) == chosen


def test_task_figures_take_each_metrics_own_direction():
    log = pd.DataFrame({"step": [0, 3, 6], "eval_loss": [3.0, 2.0, 1.0], "eval_chrf": [5.0, 9.0, 7.0],
                        "eval_sari": [40.0, 30.0, 35.0], "eval_term_coverage": [math.nan] * 3})
    figures = train._task_figures(log)
    assert figures == {"chrf_first": 5.0, "chrf_last": 7.0, "chrf_best": 9.0,
                       "sari_first": 40.0, "sari_last": 35.0, "sari_best": 35.0}
    assert train._best_eval_loss(log) == 1.0
