"""Blind human ratings without a browser: ratings.jsonl -> win rate with an interval, per rater,
Cohen's kappa against a hand-computed value, preference pairs, the place a rater resumes at, and
`polo rate`'s refusals before anything starts.

Runs here are folders written by hand (params.yaml, a manifest with one finished evaluation,
predictions.jsonl): the ratings read nothing else, and no model is needed (tests/test_browser.py's
rating test goes through runs.open_run and runs.start_evaluation)."""
import json

import pandas as pd
import pytest

from polo_lib import cli, params, prompts, ratings, reports, runs, stats
from polo_lib.errors import ParamsError, RunError

IDS = ["e1", "e2", "e3", "e4", "e5"]


def predictions(ids=IDS, tuned="tuned answer to", base="base answer to") -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "original": [f"paragraph {i}" for i in ids],
                         "reference": [f"reference {i}" for i in ids],
                         "base": [f"{base} {i}" for i in ids], "tuned": [f"{tuned} {i}" for i in ids]})


def task_in(folder, table=None) -> ratings.Task:
    return ratings.make_task("run-1", "eval-1", folder, predictions() if table is None else table)


def evaluated_run(outputs, run_id: str, table: pd.DataFrame | None) -> runs.Run:
    """A finished run folder with one finished evaluation holding `table` as its predictions
    (None: a run that was never evaluated)."""
    run = runs.Run(run_id, outputs / "runs" / run_id)
    run.eval.mkdir(parents=True)
    params.save(params.load("smoke"), run.params_path)
    entries = []
    if table is not None:
        eval_id = "20261201-000000-test-all"
        (run.eval / eval_id).mkdir()
        table.to_json(run.eval / eval_id / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        entries = [{"id": eval_id, "status": "finished", "split": "test", "limit": None}]
    run.update_manifest(status="finished", evaluations=entries)
    return run


def press(task, rater: str, example_id: str, preferred: str, note: str = "", correction: str = "") -> dict:
    """Rate as a rater who prefers `preferred` ("tuned", "base" or "tie") presses the button for it."""
    a, b = ratings.order(rater, task.against, example_id)
    choice = "tie" if preferred == "tie" else "A" if a == preferred else "B"
    return ratings.record(task, rater, example_id, choice, note, correction)


ANN = ["tuned", "tuned", "base", "tie", "tuned"]
BOB = ["tuned", "base", "base", "tie", "tuned"]


def test_win_rate_per_rater_and_cohens_kappa_match_hand_computed_values(tmp_path):
    """Two raters on five examples. ann: 1, 1, 0, .5, 1 -> 0.7; bob: 1, 0, 0, .5, 1 -> 0.5; per example
    (raters averaged) 1, .5, 0, .5, 1 -> 0.6. They agree on 4 of 5: p_o = 0.8; marginals ann (tuned 3,
    base 1, tie 1), bob (2, 2, 1): p_e = (3*2 + 1*2 + 1*1) / 25 = 0.36; kappa = (0.8 - 0.36) / 0.64 = 0.6875."""
    task = task_in(tmp_path)
    for rater, choices in (("ann", ANN), ("bob", BOB)):
        for example_id, preferred in zip(IDS, choices):
            press(task, rater, example_id, preferred)
    result = ratings.results(task)
    o = result.overall
    assert (o["raters"], o["examples"], o["ratings"], o["of_examples"]) == (2, 5, 10, 5)
    assert (o["wins"], o["ties"], o["losses"]) == (5, 2, 3)
    assert o["win_rate"] == pytest.approx(0.6)
    # the interval resamples examples (each counted once), not the 10 ratings
    assert (o["low"], o["high"]) == stats.bootstrap_ci([1, 0.5, 0, 0.5, 1])
    assert 0 <= o["low"] < 0.6 < o["high"] <= 1
    per = result.per_rater.set_index("rater")
    assert per.loc["ann", "win_rate"] == pytest.approx(0.7) and per.loc["bob", "win_rate"] == pytest.approx(0.5)
    assert list(per.loc["ann", ["wins", "ties", "losses"]]) == [3, 1, 1]
    row = result.agreement.iloc[0]
    assert (row["rater_1"], row["rater_2"], row["shared"], row["agree"]) == ("ann", "bob", 5, 0.8)
    assert row["kappa"] == pytest.approx(0.6875)
    assert result.mean_kappa == pytest.approx(0.6875)
    json.dumps(result.as_dict())  # --results --json


def test_three_raters_give_a_kappa_per_pair_and_one_rater_none(tmp_path):
    task = task_in(tmp_path)
    press(task, "ann", "e1", "base")  # she changes her mind below: her last rating counts
    assert ratings.results(task).agreement.empty and ratings.results(task).overall["raters"] == 1
    for rater, choices in (("ann", ANN), ("bob", BOB), ("cy", ANN)):
        for example_id, preferred in zip(IDS, choices):
            press(task, rater, example_id, preferred)
    result = ratings.results(task)
    kappas = result.agreement.set_index(["rater_1", "rater_2"])["kappa"]
    assert kappas[("ann", "cy")] == pytest.approx(1.0)
    assert kappas[("ann", "bob")] == pytest.approx(0.6875) == kappas[("bob", "cy")]
    assert result.mean_kappa == pytest.approx((1 + 2 * 0.6875) / 3)
    assert result.overall["ratings"] == 15  # ann's second rating of e1 replaced her first


def test_the_hidden_order_is_the_same_on_every_reopening_and_each_line_records_it(tmp_path):
    task = task_in(tmp_path, predictions(ids=[f"x{i}" for i in range(40)]))
    orders = [ratings.order("ann", "base", p.id) for p in task.pairs]
    assert orders == [ratings.order("ann", "base", p.id) for p in task.pairs]
    assert {o[0] for o in orders} == {"tuned", "base"}  # both orders occur: not always tuned first
    assert orders != [ratings.order("bob", "base", p.id) for p in task.pairs]  # each rater their own coin
    first_base = next(p.id for p, o in zip(task.pairs, orders) if o[0] == "base")
    line = ratings.record(task, "ann", first_base, "A", note=" too long ", correction="")
    saved = json.loads(task.path.read_text(encoding="utf-8").splitlines()[-1])
    assert saved == line
    assert (saved["a"], saved["b"], saved["choice"], saved["preferred"]) == ("base", "tuned", "A", "base")
    assert (saved["a_text"], saved["note"], saved["rater"]) == (f"base answer to {first_base}", "too long", "ann")
    assert saved["time"].endswith("+00:00") and saved["against"] == "base" and saved["example_id"] == first_base


def test_a_rater_resumes_at_the_first_example_they_have_not_rated(tmp_path, caplog):
    task = task_in(tmp_path)
    assert ratings.position(task, "ann") == 0
    for example_id in ("e1", "e2", "e3"):
        press(task, "ann", example_id, "tuned")
    assert ratings.position(task, "ann") == 3 and ratings.position(task, "bob") == 0
    press(task, "bob", "e2", "base")
    assert ratings.position(task, "bob") == 0  # e1 is still to rate
    with task.path.open("a", encoding="utf-8") as f:  # a crash while a line was written
        f.write('{"rater": "ann", "example_id": "e4", "aga')
    assert ratings.position(task, "ann") == 3
    for example_id in ("e4", "e5"):
        press(task, "ann", example_id, "tie")
    assert ratings.position(task, "ann") == 5 == len(task.pairs)
    lines = task.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7 and lines[4].endswith('"aga')  # the cut line was ended before the next was added
    assert [json.loads(line)["example_id"] for line in lines[5:]] == ["e4", "e5"]
    with caplog.at_level("WARNING"):
        assert len(ratings.read(task.path)) == 6
    assert "skipped line(s) 5" in caplog.text


def test_preference_pairs_skip_ties_and_put_a_correction_over_both_answers(tmp_path):
    task = task_in(tmp_path)
    press(task, "ann", "e1", "tuned")
    press(task, "ann", "e2", "tie")
    press(task, "ann", "e3", "base", correction="corrected e3")
    press(task, "bob", "e4", "tie", correction="corrected e4")
    path, n = ratings.export_pairs(task, tmp_path / "pairs.jsonl")
    pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert n == len(pairs) == 1 + 3 + 2
    got = [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert got[:2] == [("e1", "tuned answer to e1", "base answer to e1"),  # preferences, ties left out
                       ("e3", "base answer to e3", "tuned answer to e3")]
    assert sorted(got[2:]) == [(i, f"corrected {i}", f"{model} answer to {i}")  # a correction over both
                               for i in ("e3", "e4") for model in ("base", "tuned")]
    assert pairs[0]["prompt"] == prompts.build_messages("paragraph e1")
    assert pairs[0]["chosen"][0]["role"] == "assistant" and pairs[0]["chosen_from"] == "tuned"
    assert {p["chosen_from"] for p in pairs[2:]} == {"correction"}


def test_against_another_run_pairs_tuned_answers_by_example_and_refuses_other_examples(tmp_path, monkeypatch):
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path))
    mine = evaluated_run(tmp_path, "run-mine", predictions())
    other = evaluated_run(tmp_path, "run-other", predictions(ids=list(reversed(IDS)), tuned="other tuned"))
    task = ratings.load_task(mine, other)
    assert task.against == "run-other" and task.folder == mine.evaluation().path
    assert task.pair("e2").answers == {"tuned": "tuned answer to e2", "run-other": "other tuned e2"}
    press(task, "ann", "e2", "run-other")
    assert ratings.results(task).overall["losses"] == 1
    assert ratings.results(ratings.load_task(mine)).overall["ratings"] == 0  # tuned vs base: its own comparison

    fewer = evaluated_run(tmp_path, "run-fewer", predictions(ids=IDS[:4]))
    with pytest.raises(RunError, match="different examples .5 vs 4 examples; only in the first: e5"):
        ratings.load_task(mine, fewer)
    with pytest.raises(RunError, match="itself"):
        ratings.load_task(mine, mine)


def test_polo_rate_refuses_bad_input_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path))
    from polo_lib.deploy import rate_app

    monkeypatch.setattr(rate_app, "launch", lambda *a, **k: pytest.fail("the page started"))
    evaluated_run(tmp_path, "run-new", None)
    rated = evaluated_run(tmp_path, "run-rated", predictions())
    cases = [(["rate", "run-new", "--rater", "ann"], "run run-new has no finished evaluation"),
             (["rate", "run-rated", "--rater", "ann", "--against", "nosuch"], "run 'nosuch' not found"),
             (["rate", "run-rated"], "needs the rater's name"),
             (["rate", "run-rated", "--rater", "  "], "needs the rater's name")]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(ParamsError):
        ratings.check_rater(None)

    task = ratings.load_task(rated)
    for example_id, preferred in zip(IDS, ANN):
        press(task, "ann", example_id, preferred, correction="better" if example_id == "e3" else "")
    assert cli.main(["rate", "run-rated", "--results", "--export-pairs", str(tmp_path / "pairs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "tuned preferred: 0.7 [" in out and "3 wins, 1 ties, 1 losses" in out, out
    assert "6 preference pair(s)" in out and len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 6
    assert cli.main(["rate", "run-rated", "--results", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["win_rate"] == pytest.approx(0.7)
    report = reports.write_report(rated).read_text(encoding="utf-8")
    assert "## Human ratings (blind)" in report and "| base | 5 | 5 of 5 | 1 | 0.7 [" in report, report
