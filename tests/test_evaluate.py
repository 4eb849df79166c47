"""Evaluation end to end on the tiny model: predictions, metrics, chart, examples, report."""
import gc
import json
import weakref

import pytest

from polo_lib import compare, data, evaluate, inference, model, params, pipeline, progress, prompts, runs
from polo_lib.errors import RunError

pytestmark = pytest.mark.slow


# Long enough for the tiny model to learn the training paragraphs, evaluated on them.
LEARNS = {"max_steps": 30, "eval_steps": 15, "save_steps": 15, "evaluation.split": "train",
          "evaluation.limit": 6, "evaluation.max_new_tokens": 48}


def test_evaluate_stage_writes_everything_into_the_run_and_the_tuned_model_beats_base(tiny_model_dir, capsys,
                                                                                     record_agrees):
    """One pipeline run (prepare, train, evaluate, in this process), the most expensive thing in this file, read
    by every check: the run folder, the live view, and a real change measured: after training on the training
    paragraphs, the tiny model's chrF on those paragraphs beats the untrained base model's. Then the run is
    evaluated again through the evaluate notebook, as `polo run --stages evaluate --run-id` does."""
    run = pipeline.run_pipeline("smoke", overrides=LEARNS, log=lambda *a: None, in_process=True)
    cfg = params.load("smoke", overrides=LEARNS)
    # the live view, fed from the progress file the stages wrote (plain lines: not a terminal)
    shown = capsys.readouterr().out
    steps, n = run.manifest()["training"]["steps"], cfg.evaluation.limit
    assert steps == 30
    assert f"  train {steps}/{steps} (100%)  epoch " in shown and "eval at step 0/" in shown
    assert f"  evaluate {n}/{n} (100%)  tuned model  " in shown and " tok/s" in shown
    state = progress.read(run.logs)
    assert (state["stage"], state["phase"], state["done"], state["total"]) == ("evaluate", "tuned model", n, n)
    first = run.evaluation()
    assert [e.id for e in run.evaluations()] == [first.id] and first.path.parent == run.eval
    for name in ("params.yaml", "predictions.jsonl", "metrics.json", "examples.md", "metrics.png"):
        assert (first.path / name).is_file(), name
    for name in ("report.md", "plots/loss.png"):
        assert (run.path / name).is_file(), name
    rows = [json.loads(line) for line in (first.path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == n
    assert set(rows[0]) >= {"id", "original", "reference", "base", "tuned", "base_new_tokens", "tuned_seconds",
                            "tuned_cut"}
    assert all(0 < r["tuned_new_tokens"] <= cfg.evaluation.max_new_tokens for r in rows)
    assert {r["base_batch_size"] for r in rows} == {cfg.evaluation.batch_size}  # memory never ran out here
    assert first.metrics()["speed"]["tuned"]["batch_size"] == cfg.evaluation.batch_size
    metrics = first.metrics()["metrics"]
    assert {"chrf", "bleu", "rouge_l", "sari", "meaning_src"} <= set(metrics)
    for values in metrics.values():
        assert set(values) >= {"base", "tuned", "delta", "delta_low", "delta_high", "p_value", "verdict", "n"}
    assert metrics["chrf"]["tuned"] > metrics["chrf"]["base"] + 2.0, metrics["chrf"]
    # every figure rests on per-example scores (scores.csv): the means are theirs, the verdict the paired interval's
    import pandas as pd

    scores = pd.read_csv(first.path / "scores.csv")
    assert len(scores) == 2 * n and set(scores["model"]) == {"base", "tuned"}
    tuned = scores[scores["model"] == "tuned"]["chrf"]
    assert metrics["chrf"]["tuned"] == pytest.approx(tuned.mean()) and metrics["chrf"]["n"] == n
    c = metrics["chrf"]
    assert c["delta_low"] <= c["delta"] <= c["delta_high"]
    clear = c["p_value"] < 0.05 and not c["delta_low"] <= 0 <= c["delta_high"]
    assert c["verdict"] == ("no clear difference" if not clear else "better" if c["delta"] > 0 else "worse")
    assert metrics["hangul_share"]["tuned"] > metrics["hangul_share"]["base"]
    summary = run.summary()
    assert summary.evaluation.examples == n and summary.evaluation.id == first.id and summary.training is not None
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert "## Evaluation" in report and "plots/loss.png" in report and "chrf" in report
    assert "| metric | base | tuned | tuned - base | p | detectable | verdict |" in report
    assert f"Means over {n} examples" in report
    assert f"({first.path.relative_to(run.path).as_posix()}/metrics.png)" in report
    assert run.manifest()["stages"]["evaluate"]["status"] == "finished"
    record_agrees(run)

    # polo compare: another run evaluated on the same examples, paired per example. Its "tuned" answers are
    # this evaluation's base answers (another system's answers to the same paragraphs, without generating
    # them again), so its means are this run's base means and the difference is the base - tuned one.
    from adapter_runs import make_adapter_run

    from polo_lib import cli, paths
    from polo_lib.atomic import atomic_write_text

    other = make_adapter_run(paths.outputs_dir(), "smoke", 0.02, LEARNS)
    other = runs.open_run(cfg, other.id, stage="evaluate", may_differ=("evaluation",))
    scored = runs.start_evaluation(other, cfg)
    answers = pd.read_json(first.path / "predictions.jsonl", lines=True, dtype={"id": str})
    answers = answers.assign(tuned=answers["base"], tuned_cut=answers["base_cut"])
    atomic_write_text(scored.path / "predictions.jsonl",
                      answers.to_json(orient="records", lines=True, force_ascii=False))
    evaluate.score(answers.set_index("id"), cfg, scored)
    runs.finish_stage(other, "evaluate")
    capsys.readouterr()
    assert cli.main(["compare", run.id, other.id]) == 0
    shown = capsys.readouterr().out
    assert f"{other.id} against {run.id} (the baseline), {n} examples, paired:" in shown and "verdict" in shown
    table = compare.paired([run, other])
    chrf = table.loc[(other.id, "chrf")]
    mine, theirs = (pd.read_csv(e.path / "scores.csv", dtype={"id": str}) for e in (first, scored))
    assert chrf["delta"] == pytest.approx(theirs[theirs["model"] == "tuned"]["chrf"].mean()
                                          - mine[mine["model"] == "tuned"]["chrf"].mean())
    assert chrf["baseline"] == pytest.approx(metrics["chrf"]["tuned"]) and chrf["n"] == n
    assert chrf["other"] == pytest.approx(theirs[theirs["model"] == "tuned"]["chrf"].mean())  # the run's own mean
    assert chrf["other"] == pytest.approx(metrics["chrf"]["base"]) and chrf["delta"] == pytest.approx(-c["delta"])

    # evaluate the same run again with other evaluation settings: a second evaluation beside the first
    files_before = {p.name: p.read_bytes() for p in first.path.iterdir()}
    trained_params = run.params_path.read_bytes()
    capsys.readouterr()
    again = pipeline.run_pipeline("smoke", overrides={**LEARNS, "evaluation.limit": 1}, stages=["evaluate"],
                                  run_id=run.id, log=lambda *a: None)
    assert "  evaluate 1/1 (100%)  tuned model  " in capsys.readouterr().out  # from the kernel's progress file
    executed = json.loads((run.notebooks / "evaluate.ipynb").read_text(encoding="utf-8"))
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
    second = run.evaluation()
    assert again.id == run.id and [e.id for e in run.evaluations()] == [first.id, second.id]
    assert {p.name: p.read_bytes() for p in first.path.iterdir()} == files_before  # the first is untouched
    assert len((second.path / "predictions.jsonl").read_text().splitlines()) == 1
    assert second.params().evaluation.limit == 1 and first.params().evaluation.limit == n
    assert run.params_path.read_bytes() == trained_params  # params.yaml stays what was trained
    summary = run.summary()
    assert (summary.evaluation.id, summary.evaluation.examples) == (second.id, 1)
    assert [(e.id, e.examples) for e in summary.evaluations] == [(first.id, n), (second.id, 1)]
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert "## Evaluation (train, 1 examples)" in report and "the latest of 2" in report
    assert f"differ from the run's params.yaml in: limit 1 (params.yaml: {n})" in report
    assert "## Every evaluation of this run" in report and f"| {first.id} | finished | train | {n} | {n} |" in report
    record_agrees(run)
    # the latest evaluation of the first run holds 1 example: compared with the other's 6, refused, naming why
    with pytest.raises(RunError, match=r"were evaluated on different examples \(1 vs 6 examples"):
        compare.paired([run, other])
    # compare_runs: each run's latest evaluation, or the one asked for (by a prefix of its id)
    assert compare.metrics_table([run]).loc[run.id, "evaluation"] == second.id
    picked = compare.metrics_table([run], f"{{{run.id[:-2]}: {first.id}}}")  # as papermill -p passes it
    assert picked.loc[run.id, "evaluation"] == first.id and picked.loc[run.id, "chrf"] == metrics["chrf"]["tuned"]
    with pytest.raises(RunError, match=f"no evaluation 'nope'. Its evaluations: {first.id}, {second.id}"):
        compare.metrics_table([run], {run.id: "nope"})


def test_evaluating_a_run_without_adapter_is_a_clear_error_and_makes_nothing(tiny_model_dir):
    cfg = params.load("smoke")
    run = runs.open_run(cfg)
    with pytest.raises(RunError, match="has no adapter"):
        inference.load_tuned(cfg, run)
    with pytest.raises(RunError, match="has no adapter"):
        runs.start_evaluation(run, cfg)
    assert list(run.eval.iterdir()) == [] and run.evaluations() == []


def test_generation_is_batched_and_stops_at_eos(tiny_model_dir, monkeypatch):
    cfg = params.load("smoke")
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    ds = data.load_processed(cfg.data)
    lm = inference.load_base(cfg)
    tok, eos, pad = lm.tokenizer, lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    assert eos != pad
    # the untrained tiny model ends some answers with EOS within a few tokens and runs on in others
    chats = inference.chats_of(ds["test"]) + inference.chats_of(ds["train"].select(range(10)))
    calls, real_generate = [], lm.model.generate  # per batch: prompt length, the ids generate returned

    def recorded(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        calls.append((kwargs["input_ids"].shape[1], out.tolist()))
        return out

    monkeypatch.setattr(lm.model, "generate", recorded)
    batched = inference.generate(lm, chats, max_new_tokens=8, batch_size=4)
    generated = [len(out[0]) - prompt for prompt, out in calls]  # new tokens per batch
    rows = [ids[prompt:] for prompt, out in calls for ids in out]
    single = inference.generate(lm, chats, max_new_tokens=8, batch_size=1)
    assert len(batched) == len(chats) == len(rows) and all(g.new_tokens <= 8 for g in batched)
    # left padding: batched greedy output equals one-at-a-time output
    assert [(g.text, g.new_tokens, g.stopped) for g in batched] == [(g.text, g.new_tokens, g.stopped) for g in single]
    stopped = [g for g in batched if g.stopped]
    assert 0 < len(stopped) < len(batched), "every or no answer ends at EOS: these chats no longer test both"
    for g, new in zip(batched, rows):
        if g.stopped:  # EOS is the last token counted, and the model generated nothing after it
            assert g.new_tokens < 8 and new[g.new_tokens - 1] == eos and eos not in new[:g.new_tokens - 1]
            assert not g.cut
            assert set(new[g.new_tokens:]) <= {pad}, new
        else:  # no EOS: it ran to max_new_tokens
            assert g.new_tokens == 8 and eos not in new and g.cut
        assert g.text == tok.decode(new[:g.new_tokens], skip_special_tokens=True).strip()
    # a batch runs as long as its longest answer, not to max_new_tokens once every answer hit EOS
    news = [g.new_tokens for g in batched]
    assert generated == [max(news[i:i + 4]) for i in range(0, len(chats), 4)] and min(generated) < 8


def test_an_answer_cut_at_max_new_tokens_is_recorded_and_shown_as_cut(tiny_run):
    """predictions.jsonl says which answers ran to max_new_tokens (`<model>_cut`), the speed table
    counts them, and the examples end them with the cut note; their text is scored as it stands."""
    import pandas as pd

    ended = inference.Generation("YOLO는 한 번에 봅니다.", 9, 0.5, stopped=True)
    cut = inference.Generation("YOLO는 사진을 격자로 나누", 48, 0.5)
    rows = [{"id": "1", "original": "o1", "reference": "r1", **evaluate.answer_fields("base", cut),
             **evaluate.answer_fields("tuned", ended)},
            {"id": "2", "original": "o2", "reference": "r2", **evaluate.answer_fields("base", cut),
             **evaluate.answer_fields("tuned", cut)}]
    assert (rows[0]["base_cut"], rows[0]["tuned_cut"], rows[0]["base"]) == (True, False, cut.text)
    predictions = pd.DataFrame(rows).set_index("id")
    assert evaluate.speed_table(predictions)["cut"].to_dict() == {"base": 2, "tuned": 1}
    evaluation = runs.start_evaluation(tiny_run, tiny_run.params())
    table = evaluate.examples(predictions, evaluation).data  # a Styler: texts whole and wrapped; .data the frame
    note = "[cut off at the limit of 48 new tokens]"
    assert table.loc["1", "tuned"] == ended.text and table.loc["1", "base"] == f"{cut.text}\n\n{note}"
    assert (evaluation.path / "examples.md").read_text(encoding="utf-8").count(note) == 3
    assert list(predictions["base"]) == [cut.text] * 2  # what the metrics read: the model's words alone
    older = predictions.drop(columns=["base_cut", "tuned_cut"])  # predictions written before `_cut`
    assert evaluate.speed_table(older)["cut"].isna().all()
    assert evaluate.examples(older).data.loc["1", "base"] == cut.text


def test_generation_halves_its_batch_when_memory_runs_out_and_fails_clearly_at_one(tiny_model_dir, monkeypatch):
    """Out of memory in a batch (the real exception type, raised where the model generates): the batch
    size halves and the batch runs again; the answers are the ones generated one at a time."""
    import torch

    from polo_lib.errors import ModelError

    lm = inference.load_base(params.load("smoke"))
    chats = [prompts.build_messages(f"YOLO grid cell {i} predicts boxes.") for i in range(5)]
    real, rows_asked = lm.model.generate, []

    def two_rows_fit(*args, **kwargs):
        rows_asked.append(kwargs["input_ids"].shape[0])
        if rows_asked[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (injected: over 2 rows)")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", two_rows_fit)
    gens = inference.generate(lm, chats, max_new_tokens=6, batch_size=8)
    assert rows_asked == [5, 4, 2, 2, 1] and [g.batch_size for g in gens] == [2] * 5
    monkeypatch.setattr(lm.model, "generate", real)
    assert [g.text for g in gens] == [g.text for g in inference.generate(lm, chats, max_new_tokens=6, batch_size=1)]

    def nothing_fits(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(lm.model, "generate", nothing_fits)
    with pytest.raises(ModelError, match=r"one answer at a time .*batch size 8 halved down to 1.*max_new_tokens \(6\)"):
        inference.generate(lm, chats, max_new_tokens=6, batch_size=8)


def test_evaluation_params_may_change_but_training_params_may_not(tiny_model_dir):
    cfg = params.load("smoke")
    run = runs.open_run(cfg)
    runs.open_run(params.load("smoke", overrides={"evaluation.limit": 1}), run.id, stage="evaluate",
                  may_differ=("evaluation",))
    assert run.manifest()["evaluate_params"]["evaluation"]["limit"] == 1
    with pytest.raises(RunError, match="other params .*learning_rate"):
        runs.open_run(params.load("smoke", learning_rate=1e-4), run.id, stage="evaluate",
                      may_differ=("evaluation",))


def test_base_model_is_freed_before_the_tuned_model_loads(tiny_model_dir, monkeypatch):
    """On a 16 GB T4 the base and tuned 3B models must not be held at once: when predict loads
    the tuned model, nothing may keep the base model alive any more (real loaders, tiny model)."""
    cfg = params.load("smoke", overrides={"evaluation.limit": 1, "evaluation.max_new_tokens": 2})
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    run = runs.open_run(cfg)
    lm = model.load(cfg)
    lm.model.save_pretrained(str(run.adapter))
    lm.tokenizer.save_pretrained(str(run.adapter))
    del lm
    gc.collect()

    load_base, load_tuned = inference.load_base, inference.load_tuned
    base_models, alive_at_tuned_load = [], []

    def watched_base(c):
        loaded = load_base(c)
        base_models.append(weakref.ref(loaded.model))
        return loaded

    def watched_tuned(c, r):
        alive_at_tuned_load.append(base_models[0]() is not None)
        return load_tuned(c, r)

    monkeypatch.setattr(inference, "load_base", watched_base)
    monkeypatch.setattr(inference, "load_tuned", watched_tuned)
    predictions = evaluate.predict(runs.start_evaluation(run, cfg), cfg, data.load_processed(cfg.data))
    assert len(predictions) == 1 and predictions["tuned_new_tokens"].iloc[0] > 0
    assert alive_at_tuned_load == [False], "the base model was still in memory when the tuned one loaded"
