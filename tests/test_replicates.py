"""Replicate seeds: `polo run --seeds N` and queue items with `seeds:` train the same params with seeds
params' seed + i, tagged as one group; `polo compare GROUP GROUP` aggregates each group across seeds (a
t-interval over the seeds' means) and pairs the groups per (seed index, example).

No model is trained or loaded here: the groups' evaluations are written by the library's own scoring
(evaluate.score) from answers given as text, and the pipeline test runs only the prepare stage."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from polo_lib import cli, evaluate, params, pipeline, queues, replicates, runs, stats
from polo_lib.errors import ParamsError, RunError

EXAMPLES = [("1.1.1", "YOLO divides the image into a grid.", "YOLO는 이미지를 격자로 나눕니다."),
            ("1.1.2", "Each cell predicts bounding boxes.", "각 칸은 상자를 예측합니다."),
            ("1.1.3", "Confidence reflects how sure the model is.", "신뢰도는 모델이 얼마나 확신하는지 나타냅니다."),
            ("1.1.4", "The network runs at 45 frames per second.", "이 신경망은 초당 45장을 처리합니다.")]


def evaluated_run(seed: int, tuned: list[str], examples=EXAMPLES) -> runs.Run:
    """A run (smoke params, this training.seed) with one finished evaluation of these tuned answers:
    predictions.jsonl as evaluate.predict writes it, scores.csv and metrics.json by evaluate.score."""
    cfg = params.load("smoke", overrides={"training.seed": seed})
    run = runs.open_run(cfg, stage="evaluate")
    run.adapter.mkdir(exist_ok=True)
    (run.adapter / "adapter_config.json").write_text("{}")  # evaluations are of trained runs; nothing loads it
    evaluation = runs.start_evaluation(run, cfg)
    rows = [{"id": i, "paper": "", "original": o, "reference": r, "base": o, "tuned": t,
             "base_new_tokens": 5, "base_seconds": 0.1, "tuned_new_tokens": 5, "tuned_seconds": 0.1}
            for (i, o, r), t in zip(examples, tuned)]
    (evaluation.path / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                               for r in rows), encoding="utf-8")
    evaluate.score(pd.DataFrame(rows).set_index("id"), params.load("smoke"), evaluation)
    runs.finish_stage(run, "evaluate")
    return run


def group_of(answers_per_seed: list[list[str]], examples=EXAMPLES) -> tuple[str, list[runs.Run]]:
    """A replicate group, tagged the way `--seeds` tags: replicates.plan, runs.tag_replicate."""
    base_seed = params.load("smoke").training.seed
    group = replicates.new_group_id("smoke")
    members = []
    for tag, tuned in zip(replicates.plan(base_seed, len(answers_per_seed), group), answers_per_seed):
        run = evaluated_run(tag["seed"], tuned, examples)
        runs.tag_replicate(run, **tag)
        members.append(run)
    return group, members


def tuned_means(run: runs.Run) -> pd.Series:
    scores = pd.read_csv(run.evaluation().path / "scores.csv", dtype={"id": str})
    return scores[scores["model"] == "tuned"].drop(columns=["id", "model"]).mean()


def test_the_between_seed_interval_is_students_t_over_the_seeds_means():
    means = np.array([31.0, 35.5, 29.2])
    low, high = stats.t_interval(means, 0.95)
    half = scipy_stats.t.ppf(0.975, df=2) * means.std(ddof=1) / np.sqrt(3)
    assert (low, high) == pytest.approx((means.mean() - half, means.mean() + half))
    assert all(np.isnan(stats.t_interval([4.0], 0.95)))  # one seed: no spread to speak of


def test_replicate_i_trains_with_the_params_seed_plus_i_and_every_run_is_tagged_into_one_group(capsys):
    """`polo run smoke --seeds 2` through the real pipeline function (prepare only: no training)."""
    assert cli.main(["run", "smoke", "--seeds", "2", "--stages", "prepare", "--in-process"]) == 0
    base_seed = params.load("smoke").training.seed
    groups = runs.replicate_groups()
    assert len(groups) == 1
    (group, members), = groups.items()
    assert group.startswith("rep-") and len(members) == 2
    for i, run in enumerate(members):
        assert run.manifest()["replicates"] == {"group": group, "index": i, "of": 2, "seed": base_seed + i}
        assert run.params().training.seed == base_seed + i  # the seed the run trains with, in its params.yaml
    assert "group" in runs.registry().columns and runs.registry()["group"].str.startswith(group).all()
    with pytest.raises(ParamsError, match="seeds must be a whole number"):
        replicates.plan(base_seed, 0, group)


def test_a_queue_item_with_seeds_runs_one_tagged_replicate_per_seed(tmp_path):
    queue = tmp_path / "q.yaml"
    queue.write_text("base: smoke\nset: {max_steps: 2}\nvariants:\n  - {name: a, seeds: 2}\n  - {name: b}\n")
    calls = []

    def execute(base, overrides, stages, name, log, queue, replicate=None):
        calls.append((name, overrides, replicate))
        run = runs.open_run(pipeline.resolve(base, overrides, name))
        if replicate:
            runs.tag_replicate(run, **replicate)
        return run

    table, _ = queues.run_queue(queue, log=lambda _: None, execute=execute)
    seed = params.load("smoke").training.seed
    assert [(n, o.get("training.seed"), r and (r["index"], r["of"])) for n, o, r in calls] == \
        [("smoke-a", seed, (0, 2)), ("smoke-a", seed + 1, (1, 2)), ("smoke-b", None, None)]
    assert list(table["item"]) == ["a", "a", "b"] and list(table["seed"].iloc[:2]) == [seed, seed + 1]
    assert calls[0][2]["group"] == calls[1][2]["group"] in runs.replicate_groups()
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\nvariants:\n  - {name: a, seeds: 0}\n")
    with pytest.raises(ParamsError, match="item 'a': seeds must be a whole number"):
        queues.load(bad)


def test_groups_are_summarized_across_seeds_and_compared_pooled_per_seed_and_example(capsys):
    """Seed 1 is much worse than seed 0 in both groups, and the second group a little worse than the first
    at each seed: only pairing replicate i with replicate i (not a seed with another) makes that clear."""
    references = [r for _, _, r in EXAMPLES]
    halves = [r[: len(r) // 2] for r in references]
    good, good_members = group_of([references, halves])
    bad, bad_members = group_of([[r[:-3] for r in references], [h[:-2] for h in halves]])

    summary = replicates.summary(good[:-2])  # a unique prefix names a group too
    per_seed = [tuned_means(r)["chrf"] for r in good_members]
    chrf = summary.loc["chrf"]
    assert chrf["mean"] == pytest.approx(np.mean(per_seed)) and chrf["seeds"] == 2 and chrf["examples"] == 4
    assert (chrf["low"], chrf["high"]) == pytest.approx(stats.t_interval(per_seed, 0.95))

    table = replicates.compare_groups([good, bad])
    row = table.loc[(bad, "chrf")]
    assert row["n"] == 8  # pairs: (seed index, example), 2 seeds x 4 examples
    pooled = np.mean([tuned_means(b)["chrf"] - tuned_means(g)["chrf"] for g, b in zip(good_members, bad_members)])
    assert row["delta"] == pytest.approx(pooled) and row["verdict"] == "worse"
    scores = {r.id: pd.read_csv(r.evaluation().path / "scores.csv", dtype={"id": str}).query("model == 'tuned'")
              .set_index("id")["chrf"] for r in good_members + bad_members}
    pairs = [scores[b.id][i] - scores[g.id][i] for g, b in zip(good_members, bad_members) for i in scores[g.id].index]
    assert row["p_value"] == pytest.approx(stats.permutation_p(pairs))  # replicate i paired with replicate i

    capsys.readouterr()
    assert cli.main(["compare", good, bad]) == 0
    shown = capsys.readouterr().out
    assert f"group {good}: 2 seeds, 4 examples each" in shown
    assert f"{bad} against {good} (the baseline), 8 pairs (seed index, example), pooled:" in shown
    assert cli.main(["compare", good, bad, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {(r["group"], r["metric"], r["seeds"]) for r in printed["groups"]} >= {(good, "chrf", 2), (bad, "chrf", 2)}
    assert next(r for r in printed["pooled"] if r["metric"] == "chrf")["delta"] == pytest.approx(pooled)


def test_a_group_that_matches_nothing_or_holds_other_examples_is_refused_naming_why():
    references = [r for _, _, r in EXAMPLES]
    good, _ = group_of([references, references])
    with pytest.raises(RunError, match="replicate group 'rep-nothing' not found.*Known groups: rep-"):
        replicates.summary("rep-nothing")
    other_examples = [(i, o + " (v2)", r) for i, o, r in EXAMPLES]
    other, _ = group_of([references, references], other_examples)
    with pytest.raises(RunError, match=f"groups {good} and {other} were evaluated on different examples "
                                       r"\(the source text of 1.1.1"):
        replicates.compare_groups([good, other])
    three, _ = group_of([references] * 3)
    with pytest.raises(RunError, match="different replicates"):
        replicates.compare_groups([good, three])
    assert cli.main(["compare", good, "latest"]) == 2  # runs and groups are not mixed
