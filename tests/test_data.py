"""Data: every bad record is named at once; cleaning, grouping and splits are exact and repeatable."""
import json
from pathlib import Path

import pytest

from polo_lib import data, params
from polo_lib.errors import DataError


def rec(rid="1.1.1", **kw):
    major, minor, _ = (int(x) for x in rid.split("."))
    base = {"id": rid, "section_major": major, "section_minor": minor,
            "original": "The network sees the whole image.", "simplified": "네트워크는 이미지 전체를 봅니다."}
    base.update(kw)
    return base


def write_json(tmp_path: Path, obj) -> Path:
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("items,expected", [
    ({"id": "1.1.1"}, "expected a JSON list of records, got a JSON dict"),
    ([], "the list is empty"),
    (["text"], "record 0: expected an object"),
    ([{k: v for k, v in rec().items() if k != "original"}], "record 0 (id 1.1.1): missing field 'original'"),
    ([rec(extra=1)], "unexpected field 'extra'"),
    ([rec(section_major="1")], "'section_major' must be int, got str '1'"),
    ([rec(section_minor=True)], "'section_minor' must be int, got bool"),
    ([rec(original=3)], "'original' must be str, got int 3"),
    ([rec(simplified="")], "'simplified' is empty"),
    ([rec(simplified="   \n")], "'simplified' is empty"),
    ([rec(), rec()], "record 1 (id 1.1.1): duplicate id (also record 0)"),
    ([rec(section_minor=2)], "section_minor is 2 but the id says 1"),
    ([rec(id="1.1")], "id must look like 'major.minor.n'"),
])
def test_each_bad_record_is_named(tmp_path, items, expected):
    with pytest.raises(DataError) as e:
        data.load_raw(write_json(tmp_path, items))
    assert "raw.json" in str(e.value) and expected in str(e.value)


def test_all_bad_records_are_reported_at_once(tmp_path):
    items = [rec("1.1.1"), rec("1.1.2", simplified=""), rec("1.1.2"), rec("2.1.1", section_major=3)]
    with pytest.raises(DataError) as e:
        data.load_raw(write_json(tmp_path, items))
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "'simplified' is empty" in msg and "duplicate id" in msg and "section_major is 3" in msg


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "raw.json"
    path.write_text('[\n  {"id": "1.1.1",,}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"raw.json: not valid JSON at line 2, column"):
        data.load_raw(path)


def test_non_utf8_bytes_name_the_position(tmp_path):
    path = tmp_path / "raw.json"
    path.write_bytes(b'[{"id": "1.1.1", "original": "\xff\xfe"}]')
    with pytest.raises(DataError, match=r"not UTF-8 at byte 30 \(line 1\)"):
        data.load_raw(path)


def test_missing_file_says_which_param_to_set(tmp_path):
    with pytest.raises(DataError, match=r"no such file. Set data.raw_file"):
        data.load_raw(tmp_path / "nope.json")


def test_fillers_are_removed_anywhere_case_insensitively_with_whitespace_normalized():
    phrases = ["In simple terms, ", "쉽게 말해서, "]
    text, removed = data.remove_fillers("in simple terms,  YOLO는 빠릅니다.   쉽게 말해서, 한 번  봅니다.", phrases)
    assert text == "YOLO는 빠릅니다. 한 번 봅니다."
    assert removed == ["In simple terms,", "쉽게 말해서,"]


def test_cleaning_reports_what_it_removed_and_refuses_an_empty_result():
    records = data.validate_records([rec("1.1.1", simplified="쉽게 말해서, 빠릅니다."), rec("1.1.2")])
    cleaned, report = data.clean_records(records, ["쉽게 말해서, "])
    assert cleaned[0].simplified == "빠릅니다." and cleaned[1] == records[1]
    assert report.to_dict("records") == [{"id": "1.1.1", "removed": "쉽게 말해서,",
                                          "before": "쉽게 말해서, 빠릅니다.", "after": "빠릅니다."}]
    only_filler = data.validate_records([rec("1.1.1", simplified="쉽게 말해서,")])
    with pytest.raises(DataError, match="id 1.1.1: 'simplified' is empty after removing"):
        data.clean_records(only_filler, ["쉽게 말해서, "])


def test_paragraphs_group_by_section_in_numeric_id_order():
    items = [rec("1.1.10", original="ten."), rec("1.1.2", original="two."), rec("2.1.1"),
             rec("1.2.1"), rec("1.1.1", original="one.")]
    paragraphs = data.group_paragraphs(data.validate_records(items))
    assert [p.id for p in paragraphs] == ["1.1", "1.2", "2.1"]
    assert paragraphs[0].record_ids == ("1.1.1", "1.1.2", "1.1.10")
    assert paragraphs[0].original == "one. two. ten."


def paragraphs(n):
    return data.group_paragraphs(data.validate_records([rec(f"{i // 5 + 1}.{i % 5 + 1}.1") for i in range(n)]))


def test_split_is_deterministic_disjoint_and_complete():
    ps = paragraphs(40)
    a = data.split_paragraphs(ps, 0.1, 0.1, seed=3407)
    b = data.split_paragraphs(list(reversed(ps)), 0.1, 0.1, seed=3407)
    ids = {s: [p.id for p in a[s]] for s in a}
    assert ids == {s: [p.id for p in b[s]] for s in b}  # input order does not matter
    assert (len(ids["train"]), len(ids["validation"]), len(ids["test"])) == (32, 4, 4)
    assert not set(ids["train"]) & set(ids["validation"]) and not set(ids["train"]) & set(ids["test"])
    assert not set(ids["validation"]) & set(ids["test"])
    assert sorted(sum(ids.values(), []), key=data._key) == [p.id for p in ps]
    other = data.split_paragraphs(ps, 0.1, 0.1, seed=1)
    assert [p.id for p in other["test"]] != ids["test"]


def test_too_few_paragraphs_to_split():
    with pytest.raises(DataError, match="2 paragraphs cannot be split"):
        data.split_paragraphs(paragraphs(2), 0.1, 0.1, seed=0)


def test_examples_are_system_user_assistant_chats():
    (example,) = data.to_examples(paragraphs(1))
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert example["original"] in example["messages"][1]["content"]
    assert example["messages"][2]["content"] == example["simplified"]


def test_length_policy_fails_naming_ids_or_drops():
    examples = [{"id": "1.1"}, {"id": "1.2"}, {"id": "2.1"}]
    with pytest.raises(DataError, match=r"2 train example\(s\) exceed max_seq_length=100: 1.2 \(150 tokens\), "
                                        r"2.1 \(101 tokens\). Raise model.max_seq_length to at least 150"):
        data.apply_length_policy("train", examples, [90, 150, 101], 100, "fail")
    kept, dropped = data.apply_length_policy("train", examples, [90, 150, 101], 100, "drop")
    assert [e["id"] for e in kept] == ["1.1"] and dropped == ["1.2", "2.1"]


def test_the_shipped_dataset_is_valid_and_large_enough():
    cfg = params.load("cpu")
    records = data.load_raw(cfg.data.raw_file)
    cleaned, report = data.clean_records(records, cfg.data.filler_phrases)
    paragraphs_ = data.group_paragraphs(cleaned)
    assert len(records) >= 150 and len(paragraphs_) >= 40
    assert len(report) >= 10  # the data carries fillers for the cleaner to remove
    for r in cleaned:
        assert not any(p.strip().lower() in r.simplified.lower() for p in cfg.data.filler_phrases)
    covered = {r.section_major for r in records}
    assert covered >= {1, 2, 3, 4, 5, 6}


def test_the_token_length_histogram_keeps_its_legend_beside_the_bars():
    """The legend sits right of the axes: over no bar and no max_seq_length line, wherever the lengths fall
    (where matplotlib looked for the "best" place over every bar, and warned that it was slow)."""
    from polo_lib import plots

    lengths = {"train": list(range(50, 4000, 3)), "validation": list(range(60, 900, 7)), "test": []}
    fig = plots.token_length_histogram(lengths, 2048)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train (1317)", "validation (120)", "max_seq_length = 2048"]
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
