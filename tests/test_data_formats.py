"""Your own data (data.format): several papers, chat JSONL (messages) and alpaca records, each validated
with every problem at once, then through the same template, masking guard and length checks."""
import json
import re

import pytest
from transformers import AutoTokenizer

from polo_lib import data, inference, params, paths, registry, train
from polo_lib.errors import DataError, ParamsError

YOLO, RESNET = "data/raw/yolo_v1.json", "data/raw/resnet.json"


TOPICS = ["residual blocks", "batch normalization", "anchor boxes", "dropout", "attention heads", "pooling layers",
          "learning rate warmup", "weight decay", "label smoothing", "data augmentation", "skip connections",
          "feature pyramids", "non-maximum suppression", "focal loss", "layer normalization", "beam search",
          "gradient clipping", "mixed precision", "knowledge distillation", "early stopping"]
KO = ["잔차 블록", "배치 정규화", "앵커 상자", "드롭아웃", "어텐션 헤드", "풀링 층", "학습률 예열", "가중치 감쇠",
      "레이블 평활화", "데이터 증강", "건너뛰기 연결", "특징 피라미드", "비최대 억제", "초점 손실", "층 정규화",
      "빔 탐색", "기울기 자르기", "혼합 정밀도", "지식 증류", "조기 종료"]


ENDINGS = ["은 이렇게 동작합니다.", ": 예를 들어 봅시다.", "를 그림으로 그려 봅니다.", ", 왜 필요할까요?"]


def chat(i: int, system: bool = True) -> dict:
    """The i-th of 20 distinct chats (prepare's duplicate check would refuse near-identical ones)."""
    head = [{"role": "system", "content": "You explain papers in easy Korean."}] if system else []
    return {"messages": [*head, {"role": "user", "content": f"Explain {TOPICS[i - 1]}."},
                         {"role": "assistant", "content": f"{KO[i - 1]}{ENDINGS[i % 4]}"}]}


def alpaca(i: int) -> dict:
    return {"instruction": f"Explain {TOPICS[i - 1]} in easy Korean.",
            "input": "" if i % 2 else f"Notes on {TOPICS[i - 1]}.", "output": f"{KO[i - 1]}를 쉽게 설명합니다."}


def write_jsonl(path, items) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in items),
                    encoding="utf-8")
    return str(path)


def load(fmt: str, raw_file, **more) -> params.Params:
    return params.load("smoke", overrides={"data.format": fmt, "data.raw_file": raw_file, **more})


# ------------------------------------------------------------------ papers

def test_two_papers_keep_their_names_and_each_is_split_on_its_own():
    cfg = load("paper", [YOLO, RESNET])
    count, _, examples, _ = data.read_examples(cfg.data)
    assert count == len(data.load_raw(YOLO)) + len(data.load_raw(RESNET))
    assert {e.paper for e in examples} == {"yolo_v1", "resnet"}
    assert all(e.id.startswith(f"{e.paper}/") for e in examples)
    splits = data.split_paragraphs(examples, 0.1, 0.1, 3407)
    for split, ps in splits.items():  # every split holds both papers
        assert {p.paper for p in ps} == {"yolo_v1", "resnet"}, split
    ids = [p.id for ps in splits.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(examples)  # no paragraph in two splits
    # one paper alone splits exactly as it always did: its ids unprefixed, the same test paragraphs
    alone = data.split_paragraphs(data.read_examples(params.load("smoke").data)[2], 0.1, 0.1, 3407)
    assert [p.id for p in splits["test"] if p.paper == "yolo_v1"] == [f"yolo_v1/{p.id}" for p in alone["test"]]


def test_two_papers_with_one_name_are_refused():
    with pytest.raises(ParamsError, match="two files share the name yolo_v1"):
        load("paper", [YOLO, "elsewhere/yolo_v1.json"])


def test_every_bad_file_of_several_is_named_at_once(tmp_path):
    bad = tmp_path / "bad_paper.json"
    bad.write_text(json.dumps([{"id": "1.1.1", "section_major": 1, "section_minor": 1, "original": "x"}]),
                   encoding="utf-8")
    with pytest.raises(DataError) as err:
        data.read_examples(load("paper", [str(bad), str(tmp_path / "missing.json"), YOLO]).data)
    assert "bad_paper.json: 1 problem(s)" in str(err.value) and "missing field 'simplified'" in str(err.value)
    assert "missing.json: no such file" in str(err.value)


# ------------------------------------------------------------------ messages

def test_messages_become_examples_with_their_own_system_prompt(tmp_path):
    f = write_jsonl(tmp_path / "chats.jsonl", [chat(1), "", chat(2, system=False), chat(3)])
    _, _, examples, _ = data.read_examples(load("messages", f).data)
    assert [e.id for e in examples] == ["1", "3", "4"]  # line numbers; the blank line skipped
    assert examples[0].messages == chat(1)["messages"]
    assert [m["role"] for m in examples[1].messages] == ["user", "assistant"]
    assert inference.chats_of({"messages": [examples[0].messages]}) == [chat(1)["messages"][:2]]


def test_every_bad_chat_is_named_at_once(tmp_path):
    lines = [
        chat(1),
        '{"messages": [oops',
        ["not", "an", "object"],
        {"chat": []},
        {"messages": [], "id": 3},
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b", "name": "x"}]},
        {"messages": ["hello"]},
    ]
    f = write_jsonl(tmp_path / "chats.jsonl", lines)
    with pytest.raises(DataError) as err:
        data.read_examples(load("messages", f).data)
    text = str(err.value)
    expected = [
        "chats.jsonl (data.format messages): 12 problem(s)",
        "line 2: not valid JSON at column 15",
        "line 3: expected an object {\"messages\": [...]}, got list",
        "line 4: unexpected field 'chat' (allowed: messages)", "line 4: missing field 'messages'",
        "line 5: unexpected field 'id'", "line 5: 'messages' must be a non-empty list",
        "line 6: messages[0]: role must be one of system, user, assistant, got 'bot'",
        "line 6: messages[1]: content is empty",
        "line 7: expected one exchange: [system,] user, assistant; got roles "
        "['user', 'assistant', 'user', 'assistant']. Multi-turn chats are not supported",
        "line 8: messages[1]: unexpected field 'name' (allowed: role, content)",
        "line 8: expected one exchange",
        "line 9: messages[0]: expected an object {role, content}, got str",
    ]
    for line in expected:
        assert line in text, line
    assert "line 1" not in text


def test_an_empty_chat_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"(?s)empty.jsonl \(data.format messages\): 1 problem.*no records: "
                                        r"the file is empty"):
        data.read_examples(load("messages", str(tmp_path / "empty.jsonl")).data)


# ------------------------------------------------------------------ alpaca

@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca_records_from_a_json_list_or_jsonl(tmp_path, suffix):
    items = [alpaca(i) for i in range(1, 4)]
    path = tmp_path / f"tasks{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    else:
        write_jsonl(path, items)
    _, _, examples, _ = data.read_examples(load("alpaca", str(path)).data)
    assert [e.original for e in examples] == ["Explain residual blocks in easy Korean.",
                                              "Explain batch normalization in easy Korean.\n\n"
                                              "Notes on batch normalization.",
                                              "Explain anchor boxes in easy Korean."]
    assert examples[1].messages == [{"role": "user", "content": examples[1].original},
                                    {"role": "assistant", "content": "배치 정규화를 쉽게 설명합니다."}]


def test_every_bad_alpaca_record_is_named_at_once(tmp_path):
    items = [alpaca(1), {"instruction": "x"}, {"instruction": " ", "output": 5, "context": "c"}, "text"]
    (tmp_path / "tasks.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DataError) as err:
        data.read_examples(load("alpaca", str(tmp_path / "tasks.json")).data)
    text = str(err.value)
    for line in ["tasks.json (data.format alpaca): 5 problem(s)", "record 2: missing field 'output'",
                 "record 3: unexpected field 'context' (allowed: instruction, input, output)",
                 "record 3: 'instruction' is empty", "record 3: 'output' must be text, got int",
                 "record 4: expected an object with fields instruction, input, output, got str"]:
        assert line in text, line
    (tmp_path / "tasks.json").write_text('{"instruction": "x"}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list of records .or JSONL, one per line., got a JSON dict"):
        data.read_examples(load("alpaca", str(tmp_path / "tasks.json")).data)


# ------------------------------------------------- the same template, masking guard and lengths

@pytest.mark.parametrize("fmt", ["messages", "alpaca"])
def test_chat_formats_go_through_the_template_the_masking_guard_and_the_length_check(tmp_path, tiny_model_dir, fmt):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = [chat(i) for i in range(1, 21)] if fmt == "messages" else [alpaca(i) for i in range(1, 21)]
    long_answer = "길다 " * 400
    if fmt == "messages":
        items[4]["messages"][-1]["content"] = long_answer
    else:
        items[4]["output"] = long_answer
    f = write_jsonl(tmp_path / "mine.jsonl", items)
    cfg = load(fmt, f, **{"data.processed_name": f"mine-{fmt}", "data.over_length": "fail"})
    with pytest.raises(DataError, match=r"example\(s\) exceed max_seq_length=1024: 5 \(\d+ tokens\)"):
        data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length)
    cfg = load(fmt, f, **{"data.processed_name": f"mine-{fmt}", "data.over_length": "drop"})
    prepared = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length)
    assert sum(len(v) for v in prepared.dropped.values()) == 1 and prepared.stats["format"] == fmt
    data.save(prepared, cfg.data)
    ds = data.load_processed(cfg.data)
    assert set(ds["train"].column_names) == {"id", "paper", "original", "simplified", "messages"}
    markers = train.derive_markers(tokenizer)
    counts = train.label_counts(ds["train"], tokenizer, markers)
    train.check_labels("train", ds["train"]["id"], counts, markers)  # every chat keeps its answer tokens
    assert min(counts) > 0
    rendered = tokenizer.apply_chat_template(ds["train"][0]["messages"], tokenize=False)
    assert ds["train"][0]["simplified"] in rendered and markers.response in rendered


def test_a_chat_format_paper_column_names_the_file(tmp_path):
    f = write_jsonl(tmp_path / "my_chats.jsonl", [chat(1)])
    assert data.read_examples(load("messages", f).data)[2][0].paper == "my_chats"


def test_the_data_formats_are_what_params_allow():
    allowed = str(params.DataParams.model_fields["format"].annotation)
    assert tuple(registry.DATA_FORMATS) == tuple(re.findall(r"'(\w+)'", allowed))
    assert (paths.PROJ_ROOT / RESNET).is_file()


# ------------------------------------------------------------------ the per-paper evaluation

def test_an_evaluation_of_two_papers_is_broken_down_per_paper():
    """evaluate.by_paper on real predictions rows: each paper's figures are the metrics of its rows
    alone; metrics.json and report.md carry the table. One paper: no table."""
    import pandas as pd

    from polo_lib import evaluate, metrics, reports, runs

    records = {p: data.group_paragraphs(data.load_raw(f))[:2] for p, f in (("yolo_v1", YOLO), ("resnet", RESNET))}
    rows = [{"id": f"{p}/{x.id}", "paper": p, "original": x.original, "reference": x.simplified,
             "base": x.original[:60], "tuned": x.simplified[: 40 + 20 * i], "base_new_tokens": 5, "base_seconds": 1.0,
             "tuned_new_tokens": 5, "tuned_seconds": 1.0}
            for p, xs in records.items() for i, x in enumerate(xs)]
    predictions = pd.DataFrame(rows).set_index("id")
    glossary = metrics.load_glossary()
    table = evaluate.by_paper(predictions, glossary)
    assert list(table.index) == ["yolo_v1", "resnet"] and list(table["examples"]) == [2, 2]
    resnet = predictions[predictions["paper"] == "resnet"]
    assert table.loc["resnet", "chrf_tuned"] == pytest.approx(metrics.chrf(list(resnet["tuned"]),
                                                                          list(resnet["reference"])))
    assert table.loc["yolo_v1", "chrf_tuned"] != table.loc["resnet", "chrf_tuned"]
    assert evaluate.by_paper(predictions[predictions["paper"] == "resnet"], glossary) is None

    cfg = params.load("smoke", overrides={"data.raw_file": [YOLO, RESNET], "evaluation.limit": 4})
    run = runs.open_run(cfg, stage="evaluate")
    (run.adapter / "adapter_config.json").write_text("{}", encoding="utf-8")  # start_evaluation wants an adapter
    evaluation = runs.start_evaluation(run, cfg)
    evaluate.score(predictions, cfg, evaluation)
    body = json.loads((evaluation.path / "metrics.json").read_text(encoding="utf-8"))
    assert [r["paper"] for r in body["by_paper"]] == ["yolo_v1", "resnet"]
    runs.finish_stage(run, "evaluate")
    report = reports.write_report(run).read_text(encoding="utf-8")
    assert "### By paper" in report and re.search(r"^\| resnet \| 2 \| ", report, re.M)
