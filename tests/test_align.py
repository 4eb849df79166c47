"""The align stage: rewards from the metrics' own code, preference pairs, the params and refusals, and GRPO and DPO
end to end on the tiny model (`polo run smoke --stages prepare,train,align,evaluate`), each shown to move the
model the way its reward or its pairs say, on paragraphs it did not train on."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from polo_lib import align, cli, data, inference, metrics, params, pipeline, registry, runs
from polo_lib.align import pairs as pairs_lib
from polo_lib.errors import DataError, ParamsError, PoloError, RunError


def _paragraph(section=(2, 1)) -> tuple[str, str]:
    records = [r for r in data.load_raw("data/raw/yolo_v1.json") if (r.section_major, r.section_minor) == section]
    return " ".join(r.original for r in records), " ".join(r.simplified for r in records)


# ---------------------------------------------------------------- rewards

def test_rewards_rank_a_faithful_answer_over_empty_english_looping_and_cut_ones():
    source, reference = _paragraph()
    answers = {"faithful": reference, "half": reference[: len(reference) // 2], "empty": "", "english": source,
               "looping": "적용된 " * 80}
    weights = registry.DEFAULT_REWARDS
    table = align.components(list(weights), [source] * 5, list(answers.values()), [reference] * 5,
                             metrics.load_glossary()).set_axis(list(answers))
    total = align.weighted(table, weights)
    assert total["faithful"] > total["half"] > max(total["empty"], total["english"], total["looping"]), total
    assert table.loc["faithful", ["chrf", "length"]].tolist() == [1.0, 1.0]
    assert table.loc["empty", ["length", "repetition", "hangul_share"]].tolist() == [0.0, 0.0, 0.0]
    assert table.loc["english", "hangul_share"] == 0.0
    assert table.loc["looping", "repetition"] < 0.1 < 0.8 < table.loc["faithful", "repetition"]
    assert abs(table.loc["half", "length"] - 0.5) < 0.05
    assert ((table >= 0) & (table <= 1)).all().all()


def test_a_metric_reward_is_the_evaluations_own_score_scaled_to_0_1():
    source, reference = _paragraph()
    answer = reference[: len(reference) * 2 // 3] + " 물체를 찾습니다."
    names = ["chrf", "sari", "term_coverage", "hangul_share", "longest_repeat_mean"]
    glossary = metrics.load_glossary()
    got = align.components(names, [source], [answer], [reference], glossary).iloc[0]
    scored = metrics.per_example([registry.metric(n) for n in names],
                                 registry.Texts([source], [answer], [reference], glossary))[0]
    assert got["chrf"] == pytest.approx(scored["chrf"] / 100) and got["sari"] == pytest.approx(scored["sari"] / 100)
    assert got["term_coverage"] == pytest.approx(scored["term_coverage"])
    assert got["hangul_share"] == pytest.approx(scored["hangul_share"])
    # lower is better: the reward falls as the repeat grows
    assert got["longest_repeat_mean"] == pytest.approx(1 - min(scored["longest_repeat_mean"], 1))


def test_nothing_to_score_gives_the_same_zero_to_every_answer():
    """Glossary coverage where the source holds no glossary term is NaN as a metric: as a reward it is 0 for
    every answer to that paragraph, so it moves nothing (GRPO's advantages are within a paragraph's answers)."""
    table = align.components(["term_coverage"], ["Cats sit on mats."] * 2, ["고양이", "매트"], ["고양이", "고양이"],
                             metrics.load_glossary())
    assert table["term_coverage"].tolist() == [0.0, 0.0]


def test_trl_reward_functions_are_named_normalized_and_read_the_paragraph_columns():
    source, reference = _paragraph()
    funcs, weights = align.trl_functions({"chrf": 3.0, "length": 1.0})
    assert [f.__name__ for f in funcs] == ["chrf", "length"] and weights == [0.75, 0.25]
    completions = [[{"role": "assistant", "content": reference}], [{"role": "assistant", "content": ""}]]
    assert funcs[0](prompts=None, completions=completions, original=[source] * 2, simplified=[reference] * 2) == \
        [1.0, 0.0]
    assert funcs[1](completions=completions, original=[source] * 2, simplified=[reference] * 2) == [1.0, 0.0]


def test_the_progress_line_shows_each_reward_component_and_the_kl():
    from polo_lib import progress

    line = progress.describe({"stage": "align", "reward": 0.3529, "kl": 0.0012, "completion_length": 166.3,
                              "rewards": {"chrf": 0.0368, "length": 0.4421}})
    assert line == "reward 0.353  chrf 0.04  length 0.44  kl 0.001  answer tokens 166"


def test_a_dpo_step_shows_its_margin_and_how_often_the_chosen_answer_wins(tmp_path):
    """DPO logs no reward: its progress line is the margin of chosen over rejected, as the trainer logs it."""
    from polo_lib import progress

    recorder = align.AlignRecorder(tmp_path / "align_log.csv", [], 24, live=False)
    recorder.on_log(3, {"loss": 0.6021, "rewards/margins": 4.81, "rewards/accuracies": 0.75, "learning_rate": 1e-4})
    state = progress.read(tmp_path)
    assert (state["done"], state["total"]) == (3, 24)
    assert progress.describe(state) == "margin 4.810  chosen preferred 0.75  loss 0.602"
    assert pd.read_csv(tmp_path / "align_log.csv")[["step", "dpo_margin", "dpo_accuracy"]].values.tolist() == \
        [[3, 4.81, 0.75]]


# ---------------------------------------------------------------- preference pairs

def test_best_and_worst_needs_the_margin_and_breaks_ties_the_same_way_each_time():
    assert pairs_lib.best_and_worst(pd.Series([0.2, 0.5, 0.1, 0.5]), 0.1) == (1, 2)
    assert pairs_lib.best_and_worst(pd.Series([0.3, 0.3, 0.3]), 0.0) is None  # all tied: nothing to prefer
    assert pairs_lib.best_and_worst(pd.Series([0.30, 0.32]), 0.05) is None  # below the margin
    assert pairs_lib.best_and_worst(pd.Series([0.1, 0.1, 0.4]), 0.2) == (2, 1)  # the last of equal worsts
    assert pairs_lib.best_and_worst(pd.Series([0.4]), 0.0) is None


def test_pairs_from_scored_candidates_keep_their_scores_for_an_audit():
    prompt = [{"role": "user", "content": "p"}]
    candidates = pd.DataFrame({
        "id": ["a", "a", "a", "b", "b"], "prompt": [prompt] * 5, "answer": ["good", "bad", "ok", "x", "y"],
        "chrf": [0.9, 0.1, 0.5, 0.5, 0.52], "length": [1.0, 0.2, 0.6, 0.5, 0.5]})
    pairs, scored = pairs_lib.build(candidates, {"chrf": 1.0, "length": 1.0}, margin=0.05)
    assert [p["id"] for p in pairs] == ["a"]  # b's answers are within the margin of each other
    (pair,) = pairs
    assert pair["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert pair["chosen_scores"] == {"weighted": 0.95, "chrf": 0.9, "length": 1.0}
    assert pair["rejected_scores"]["weighted"] == 0.15 and pair["margin"] == 0.8
    assert scored["weighted"].tolist() == [0.95, 0.15, 0.55, 0.5, 0.51]


def test_a_preference_file_names_every_bad_record_at_once(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"prompt": "A paragraph.", "chosen": "좋은 답", "rejected": "나쁜 답"},
             {"prompt": "x", "chosen": "same", "rejected": "same"},
             {"prompt": [{"role": "assistant", "content": "no"}], "chosen": "a", "rejected": "b"},
             {"chosen": "a"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\nnot json\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        data.load_preferences(path)
    text = str(e.value)
    for expected in ("line 2: chosen and rejected are the same answer", "line 3: prompt[0]",
                     "line 4: missing field 'prompt'", "line 4: missing field 'rejected'", "line 5: not valid JSON"):
        assert expected in text, text
    assert "line 1" not in text


def test_a_preference_file_reads_text_and_messages_as_conversations(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "A paragraph.", "chosen": "좋은 답", "rejected": "나쁜 답", "rater": "kim"},
            {"prompt": [{"role": "user", "content": "u"}], "chosen": [{"role": "assistant", "content": "c"}],
             "rejected": [{"role": "assistant", "content": "r"}]}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    first, second = data.load_preferences(path)
    assert first["prompt"][-1]["role"] == "user" and "A paragraph." in first["prompt"][-1]["content"]
    assert first["prompt"][0]["role"] == "system"  # the Easy prompt, as training asks
    assert first["chosen"] == [{"role": "assistant", "content": "좋은 답"}] and first["rater"] == "kim"
    assert second["prompt"] == rows[1]["prompt"]


# ---------------------------------------------------------------- params and refusals

def test_align_params_name_every_problem_at_once():
    with pytest.raises(ParamsError) as e:
        params.load("smoke", overrides={"align.method": "ppo", "align.rewards": {"chrf": 1.0, "bleurt": 1.0},
                                        "align.num_generations": 1})
    text = str(e.value)
    assert "3 problem(s)" in text and "ppo" in text and "bleurt" in text and "num_generations" in text
    with pytest.raises(ParamsError, match="at least one reward with a weight above 0"):
        params.load("smoke", overrides={"align.rewards": {"chrf": 0.0}})
    assert params.load("smoke", overrides={"align.method": "dpo"}).align.kl_beta == 0.1
    assert params.load("smoke", overrides={"align.method": "grpo"}).align.kl_beta == 0.04
    assert params.load("smoke").align is None
    # a file without the section keeps the hash it had before the section existed
    assert params.load("smoke").short_hash() == "d487de68"


def test_the_align_stage_needs_a_section_and_runs_by_default_only_with_one():
    assert "align" not in pipeline.default_stages(params.load("smoke"))
    assert pipeline.default_stages(params.load("cpu_align")) == ["prepare", "train", "align", "evaluate"]
    with pytest.raises(PoloError, match="needs an align section"):
        pipeline.check_stages(["prepare", "train", "align"], params.load("smoke"))
    with pytest.raises(ParamsError, match="no align section"):
        align.section(params.load("smoke"))


def test_align_is_refused_before_loading_without_an_sft_adapter_or_a_glossary_term(tmp_path):
    from datasets import Dataset, DatasetDict

    cfg = params.load("smoke", overrides={"align.method": "grpo"})
    run = runs.open_run(cfg)
    rows = Dataset.from_dict({"id": ["1", "2"], "original": ["Cats sit on mats.", "Dogs run."],
                              "simplified": ["고양이", "개"], "messages": [[], []]})
    dataset = DatasetDict(train=rows)
    with pytest.raises(RunError, match="no SFT adapter"):
        align.check_before_loading(cfg, dataset, run)
    run.sft_adapter.mkdir(exist_ok=True)
    (run.sft_adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match=r"none of the 2 training paragraphs holds a glossary term \(\d+ terms"):
        align.check_before_loading(cfg, dataset, run)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n', encoding="utf-8")
    cfg = params.load("smoke", overrides={"align.method": "dpo", "align.pairs": str(bad), "align.rewards": {"chrf": 1}})
    with pytest.raises(DataError, match="missing field 'chosen'"):
        align.check_before_loading(cfg, dataset, run)


def test_the_plan_says_what_an_align_step_samples_and_needs_before_loading():
    from polo_lib import device, preflight
    from polo_lib.errors import ModelError

    t4 = device.profile("t4")
    cfg = params.load("default", overrides={"align.method": "grpo", "align.max_new_tokens": 256})
    tables = preflight.plan_tables(cfg, t4)
    steps = tables["align"]["value"]
    assert steps["sequences trained per step"].startswith("4 (1 paragraph(s) x 4 answers)")
    assert steps["new tokens generated per step, at most"] == 1024
    memory = tables["align memory"]["GiB"]
    assert memory["generation cache"] > 0 and memory["reference adapter"] == memory["lora"]
    assert align.memory(cfg, t4).fits  # the default: one paragraph a step fits the 3B recipe on a T4
    wide = params.load("default", overrides={"align.method": "grpo", "align.per_device_train_batch_size": 4})
    estimate = align.memory(wide, t4)  # 16 answers of 1,024 tokens: the logits alone are ~16 GiB
    assert not estimate.fits and estimate.parts["logits"] == 4 * align.memory(cfg, t4).parts["logits"]
    with pytest.raises(ModelError):
        from polo_lib import model

        model.check_memory(estimate)
    dpo = params.load("default", overrides={"align.method": "dpo"})
    assert "generation cache" not in align.memory(dpo, t4).parts and align.sequences_per_step(dpo.align) == 2
    report = preflight.run_checks(params.load("smoke", overrides={"align.method": "grpo"}))
    row = next(r for r in report.rows if r["check"] == "align stage memory")
    assert row["status"] == "ok" and "4 sequences a step" in row["detail"]


# ---------------------------------------------------------------- end to end on the tiny model

GRPO = {"align.method": "grpo", "align.max_steps": 12, "align.max_new_tokens": 16, "align.limit": 12,
        "align.per_device_train_batch_size": 2, "align.learning_rate": 5e-3, "align.save_steps": 6,
        # one simple reward to learn (a length near the reference's: the tiny model's 16-token answers are far
        # shorter), and a second with a small weight, so that every component is logged on its own
        "align.rewards": {"length": 1.0, "hangul_share": 0.05}}


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """`polo run smoke --stages prepare,train,align,evaluate --in-process` with GRPO (the align notebook runs in
    the DPO test below); the folder's record taken before the tests below align the same run again with DPO."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("align")
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        run = pipeline.run_pipeline("smoke", overrides=GRPO, stages=["prepare", "train", "align", "evaluate"],
                                    log=lambda *a: None, in_process=True)
        evaluation = run.evaluation()
        yield {"run": run, "root": root, "manifest": run.manifest(), "summary": run.summary(),
               "report": (run.path / "report.md").read_text(encoding="utf-8"),
               "log": pd.read_csv(run.logs / "align_log.csv"), "metrics": evaluation.metrics(),
               "predictions": pd.read_json(evaluation.path / "predictions.jsonl", lines=True)}


def _held_out(cfg, run, loader, n=6, max_new_tokens=16):
    """Greedy answers of a model on the validation paragraphs (never trained on, never aligned on)."""
    split = data.load_processed(cfg.data)["validation"].select(range(n))
    gens = inference.answers_of(loader, inference.chats_of(split), progress=None, max_new_tokens=max_new_tokens,
                                batch_size=n)
    return split, [g.text for g in gens]


def test_grpo_end_to_end_keeps_the_sft_adapter_and_logs_each_reward(grpo_run, record_agrees):
    run, manifest, log = grpo_run["run"], grpo_run["manifest"], grpo_run["log"]
    record_agrees(run)
    assert manifest["status"] == "finished" and list(manifest["stages"]) == ["prepare", "train", "align", "evaluate"]
    for name in ("adapter_aligned/adapter_model.safetensors", "plots/align.png",
                 "logs/align_log.csv", "adapter/adapter_model.safetensors"):
        assert (run.path / name).is_file(), name
    assert list((run.logs / "tensorboard_align").glob("events.out.tfevents.*"))
    assert run.adapter == run.aligned_adapter and inference.is_aligned(run)
    # adapter/ is the SFT adapter as training left it: the last training checkpoint's weights, not the aligned ones
    from safetensors.torch import load_file

    sft, last = load_file(run.sft_adapter / "adapter_model.safetensors"), \
        load_file(run.checkpoints / "checkpoint-6" / "adapter_model.safetensors")
    aligned = load_file(run.aligned_adapter / "adapter_model.safetensors")
    assert sft.keys() == aligned.keys() and all(torch.equal(sft[k], last[k]) for k in sft)
    assert not all(torch.equal(sft[k], aligned[k]) for k in sft)
    assert len(log) == 12 and log["step"].tolist() == list(range(1, 13))
    for column in ("reward", "reward_length", "reward_hangul_share", "kl", "completion_length", "clipped_ratio"):
        assert log[column].notna().all(), column
    weights = GRPO["align.rewards"]
    assert log["reward"].round(4).tolist() == \
        ((log["reward_length"] * weights["length"] + log["reward_hangul_share"] * weights["hangul_share"])
         / sum(weights.values())).round(4).tolist()
    figures = grpo_run["summary"].align.figures
    assert grpo_run["summary"].align.method == "grpo" and grpo_run["summary"].align.steps == 12
    assert figures["reward_length"]["last"] > figures["reward_length"]["first"]
    assert "## Align" in grpo_run["report"] and "| reward_length |" in grpo_run["report"]


def test_grpo_raises_its_reward_on_paragraphs_it_never_saw(grpo_run):
    """The direction of learning: the length reward of greedy answers on the validation paragraphs, the SFT
    model against the aligned one (with the reward's sign flipped, the aligned model's answers get shorter)."""
    run = grpo_run["run"]
    cfg = params.load_resolved(run.params_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_PROCESSED_DIR", str(grpo_run["root"] / "processed"))
        scores = {}
        for name, loader in (("sft", lambda: inference.load_sft(cfg, run)),
                             ("aligned", lambda: inference.load_tuned(cfg, run))):
            split, answers = _held_out(cfg, run, loader)
            scores[name] = align.components(["length"], split["original"], answers, split["simplified"])["length"]
    assert scores["aligned"].mean() > 1.3 * scores["sft"].mean(), scores


def test_the_evaluation_after_align_shows_base_sft_and_aligned(grpo_run):
    predictions, body, report = grpo_run["predictions"], grpo_run["metrics"], grpo_run["report"]
    assert {"base", "sft", "tuned"} <= set(predictions.columns)
    assert (predictions["sft"] != predictions["tuned"]).any()
    assert body["rewarded"] == ["hangul_share", "length"]
    assert set(body["vs_sft"]) == set(body["metrics"])
    chrf = body["vs_sft"]["chrf"]
    assert chrf["tuned"] == body["metrics"]["chrf"]["tuned"]  # aligned = the run's model
    assert chrf["delta"] == pytest.approx(chrf["tuned"] - chrf["base"], abs=1e-9)
    assert "### Aligned against the SFT model" in report and "| hangul_share (rewarded) |" in report


def _answer_logprob(lm, prompt, answer: str) -> float:
    """log p(answer | prompt) under a loaded model, summed over the answer's tokens."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(lm.model)
    tok = lm.tokenizer
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    p = tok(head, add_special_tokens=False, return_tensors="pt").input_ids
    a = tok(answer, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([p, a], dim=1)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits.float()
    logp = logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[p.shape[1] - 1:].sum())


def test_an_export_of_an_aligned_run_carries_the_aligned_weights_and_says_so(grpo_run):
    """`polo export RUN --format adapter` after align: the exported adapter is adapter_aligned's (not the SFT
    one), its parity is checked against the aligned model, and the card has the align section."""
    from safetensors.torch import load_file

    from polo_lib.deploy import export

    run = grpo_run["run"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(grpo_run["root"] / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(grpo_run["root"] / "processed"))
        made = export.export(run, "adapter")
    exported = load_file(made.path / "adapter_model.safetensors")
    aligned = load_file(run.aligned_adapter / "adapter_model.safetensors")
    sft = load_file(run.sft_adapter / "adapter_model.safetensors")
    assert exported.keys() == aligned.keys() and all(torch.equal(exported[k], aligned[k]) for k in exported)
    assert not all(torch.equal(exported[k], sft[k]) for k in exported)
    parity = json.loads((made.path / "parity.json").read_text(encoding="utf-8"))
    assert parity["pairs"][0]["identical"] == parity["pairs"][0]["of"]  # the export answers as the aligned model
    card = (made.path / "README.md").read_text(encoding="utf-8")
    assert "## Align (these weights" in card and '"method": "grpo"' in card and '"length": 1.0' in card


def test_dpo_on_marked_pairs_prefers_the_marker_on_paragraphs_it_never_saw(grpo_run, record_agrees, capsys):
    """The same trained run aligned again, now with DPO through `polo run --stages align --run-id` (the align
    notebook in a kernel), on
    pairs whose chosen answers start with a marker the rejected ones lack: on validation paragraphs the aligned
    model's log-probability margin of marked over plain answers rises above the SFT model's (chosen and rejected
    swapped, it falls). The run's params take the new align section; the record still agrees."""
    run, root = grpo_run["run"], grpo_run["root"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        cfg = params.load_resolved(run.params_path)
        train = data.load_processed(cfg.data)["train"]
        pairs = root / "marked.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": o, "chosen": "YOLO " + s[:30], "rejected": s[:30]},
                                            ensure_ascii=False) + "\n"
                                 for o, s in zip(train["original"][:16], train["simplified"][:16])), encoding="utf-8")
        assert cli.main(["run", "smoke", "--stages", "align", "--run-id", run.id,
                         "--set", "align.method=dpo", "--set", f"align.pairs={pairs}", "--set", "align.max_steps=8",
                         "--set", "align.per_device_train_batch_size=2", "--set", "align.learning_rate=1e-3",
                         "--set", "align.save_steps=8"]) == 0
        capsys.readouterr()
        record_agrees(run)
        executed = json.loads((run.notebooks / "align.ipynb").read_text(encoding="utf-8"))
        assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
        saved = params.load_resolved(run.params_path).align
        assert saved.method == "dpo" and saved.pairs == str(pairs)
        assert run.summary().align.method == "dpo" and run.manifest()["align"]["pairs_count"] == 16
        log = pd.read_csv(run.logs / "align_log.csv")
        assert log["dpo_accuracy"].notna().all() and log["dpo_margin"].iloc[-1] > log["dpo_margin"].iloc[0]
        split = data.load_processed(cfg.data)["validation"].select(range(4))
        margins = {}
        for name, loader in (("sft", lambda: inference.load_sft(cfg, run)),
                             ("aligned", lambda: inference.load_tuned(cfg, run))):
            lm = loader()
            margins[name] = sum(_answer_logprob(lm, m[:-1], "YOLO " + s[:30]) - _answer_logprob(lm, m[:-1], s[:30])
                                for m, s in zip(split["messages"], split["simplified"])) / len(split)
            del lm
    assert margins["aligned"] > margins["sft"] + 1.0, margins
    assert not math.isnan(margins["sft"])


def test_self_pairs_sample_score_and_write_an_audit_trail(grpo_run):
    """DPO's `pairs: self`: num_generations sampled answers per paragraph from the SFT model, scored by the
    weighted rewards; pairs.jsonl holds best against worst with their scores, candidates.csv every answer, and the
    scores in both are the rewards of those very texts."""
    run = grpo_run["run"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_PROCESSED_DIR", str(grpo_run["root"] / "processed"))
        cfg = params.load_resolved(run.params_path).model_copy(deep=True)
        a = params.AlignParams(method="dpo", num_generations=3, max_new_tokens=12, temperature=1.5, pair_margin=0.0,
                               rewards={"length": 1.0, "chrf": 1.0})
        rows = data.load_processed(cfg.data)["train"].select(range(3))
        lm = inference.load_sft(cfg, run)
        folder = run.path / "self_pairs_test"
        from polo_lib import progress

        to_file, batches = progress.generation_to(folder, "align", "sampling pairs"), []

        def on_batch(done, *rest):
            batches.append(done)
            to_file(done, *rest)

        made = align.self_pairs(lm, rows, a, metrics.load_glossary(), folder, 4, on_batch=on_batch)
    assert batches == [4, 8, 9]  # the 9 answers sampled 4 at a time (align.pairs_batch_size), not 3 (one paragraph's)
    shown = progress.read(folder)  # what `polo run` shows while the pairs are sampled
    assert (shown["stage"], shown["phase"], shown["done"], shown["total"]) == ("align", "sampling pairs", 9, 9)
    assert progress.describe(shown).startswith("sampling pairs  ")
    candidates = pd.read_csv(folder / "candidates.csv", keep_default_na=False, dtype={"id": str})
    assert len(candidates) == 9 and candidates["id"].tolist() == [i for i in rows["id"] for _ in range(3)]
    written = [json.loads(line) for line in (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written == made and 1 <= len(made) <= 3
    for pair in made:
        group = candidates[candidates["id"] == pair["id"]]
        assert pair["chosen_scores"]["weighted"] == group["weighted"].max()
        assert pair["rejected_scores"]["weighted"] == group["weighted"].min()
        i = rows["id"].index(pair["id"])
        rescored = align.components(["length", "chrf"], [rows["original"][i]],
                                    [pair["chosen"][0]["content"]], [rows["simplified"][i]])
        assert rescored.loc[0, "length"] == pytest.approx(pair["chosen_scores"]["length"], abs=1e-4)


class _Crash(Exception):
    pass


def test_align_stopped_midway_resumes_from_its_checkpoint_and_logs_each_step_once(grpo_run):
    """An alignment that dies after its step-2 checkpoint (an exception from a callback at step 3, where a kill
    would land) continues from checkpoint-2 when the stage runs again with the same settings: steps 1-4 in the log
    once each, the manifest naming the checkpoint. The same settings otherwise start fresh (resume: never)."""
    from transformers import TrainerCallback

    from polo_lib import model

    run = grpo_run["run"]
    overrides = {**GRPO, "align.max_steps": 4, "align.save_steps": 2, "align.max_new_tokens": 8,
                 "align.rewards": {"length": 1.0}}

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Crash("killed at step 3")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(grpo_run["root"] / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(grpo_run["root"] / "processed"))
        cfg = params.load("smoke", overrides=overrides)
        run = runs.open_run(cfg, run.id, stage="align", may_differ=("align",))
        dataset = data.load_or_prepare(cfg)
        ready = align.check_before_loading(cfg, dataset, run)
        assert ready.resume_from is None  # another alignment's checkpoints (DPO's) are not this one's
        session = align.build(model.load(cfg, ready.device), cfg, run, ready)
        # nor its adapter: until this alignment saves its own, the run's model is the SFT one
        assert run.adapter == run.sft_adapter
        session.trainer.add_callback(Crash())
        with pytest.raises(_Crash):
            align.fit(session)
        assert [p.name for p in align.checkpoints(run)] == ["checkpoint-2"]
        run = runs.open_run(cfg, run.id, stage="align", may_differ=("align",))
        resumed = pipeline.align_stage(cfg, run, live=False)
    assert resumed.ready.resume_from.name == "checkpoint-2" and resumed.result["resumed_from"] == "checkpoint-2"
    log = pd.read_csv(run.logs / "align_log.csv")
    assert log["step"].tolist() == [1, 2, 3, 4] and log["reward_length"].notna().all()
    assert run.manifest()["align"]["status"] == "finished"
