"""The data checks prepare runs before writing: near-duplicates, leakage into validation and test, quality flags
per paragraph; every problem named at once, nothing written, the findings in stats.json."""
import json

import pytest
import yaml

from polo_lib import data, model, params, paths
from polo_lib.data import checks
from polo_lib.data.formats import Paragraph
from polo_lib.errors import DataError

DETECTION = ("We frame object detection as a single regression problem, straight from image pixels to bounding box "
             "coordinates and class probabilities, so a single network predicts all boxes at once and reasons "
             "globally about the whole image when it makes each prediction.")
RESIDUAL = ("Deeper neural networks are more difficult to train, and we present a residual learning framework that "
            "eases the training of networks substantially deeper than those used before, by learning residual "
            "functions with reference to the layer inputs.")
KOREAN = "물체 검출을 하나의 회귀 문제로 봅니다. 한 번에 모든 상자를 예측합니다. YOLO는 이미지 전체를 보고 판단합니다."


def paragraph(pid, original, simplified=KOREAN, paper="p"):
    major, minor = (int(x) for x in pid.split("/")[-1].split("."))
    return Paragraph(pid, major, minor, (f"{major}.{minor}.1",), original, simplified, paper)


def test_a_test_paragraph_copied_from_training_with_one_word_changed_is_caught_and_an_unrelated_one_is_not():
    copied = DETECTION.replace("single network", "single model")
    splits = {"train": [paragraph("1.1", DETECTION)], "validation": [paragraph("2.1", RESIDUAL, "잔차 학습은 깊은 망을 "
                                                                                             "쉽게 학습시킵니다.")],
              "test": [paragraph("3.1", copied)]}
    report = checks.run(splits, params.ChecksParams(), paper_format=False)
    assert [(d["a"], d["b"], d["splits"]) for d in report.near_duplicates] == [("1.1", "3.1", ["train", "test"])]
    assert report.near_duplicates[0]["similarity"] > 0.95
    [leak] = report.leaks
    assert (leak["id"], leak["split"], leak["closest"]) == ("3.1", "test", "1.1") and leak["overlap"] > 0.7
    assert len(report.problems) == 2
    assert "test paragraph 3.1 shares" in report.problems[1] and "training paragraph 1.1" in report.problems[1]
    # the thresholds are the params': off, nothing is found
    off = checks.run(splits, params.ChecksParams(near_duplicate=None, leakage=None), paper_format=False)
    assert off.problems == [] and off.near_duplicates == [] and off.leaks == []


def test_near_duplicates_are_found_within_a_split_and_across_papers():
    splits = {"train": [paragraph("a/1.1", DETECTION, paper="a"), paragraph("b/1.1", DETECTION.upper() + "!",
                                                                                paper="b"),
                        paragraph("a/1.2", RESIDUAL, paper="a")], "validation": [], "test": []}
    found = checks.near_duplicates([(p.id, "train", p.original) for p in splits["train"]], 0.85)
    assert [(d["a"], d["b"], d["similarity"]) for d in found] == [("a/1.1", "b/1.1", 1.0)]  # case, punctuation


def test_quality_flags_name_each_paragraph_and_stop_prepare_above_the_share():
    good = paragraph("1.1", DETECTION)
    english = paragraph("1.2", RESIDUAL, simplified="Deeper networks are hard to train; residual learning helps.")
    short = paragraph("1.3", DETECTION.replace("single regression", "one regression"), simplified="검출.")
    rows = {"train": [good, english, short], "validation": [], "test": []}
    loose = params.ChecksParams(max_flagged_share=0.9, near_duplicate=None, leakage=None, min_term_coverage=0.0)
    report = checks.run(rows, loose, paper_format=True)
    flagged = {f["id"]: f["flags"] for f in report.flagged}
    assert flagged == {"1.2": ["little Hangul"], "1.3": ["too short"]}, report.flagged
    assert report.problems == []  # 2 of 3 flagged is under 0.9
    assert report.stats()["flags"] == {"little Hangul": 1, "too short": 1}
    strict = checks.run(rows, loose.model_copy(update={"max_flagged_share": 0.5}), paper_format=True)
    [problem] = strict.problems
    assert "2 of 3 paragraphs flagged (67%" in problem and "1.2 (little Hangul)" in problem and "1.3 (too short)" in \
        problem
    # the source's glossary terms dropped from the Korean
    dropped = paragraph("1.4", "Non-maximum suppression removes duplicate boxes after the IoU test.",
                        simplified="겹치는 상자를 지웁니다. 그 뒤에 남은 상자만 씁니다.")
    [terms] = checks.run({"train": [dropped]}, params.ChecksParams(max_flagged_share=1.0), paper_format=True).flagged
    assert terms["flags"] == ["terms missing"] and terms["term_coverage"] == 0.0


def test_prepare_refuses_leaking_data_naming_the_ids_and_writes_nothing(tmp_path, tiny_model_dir):
    """A raw file whose paragraph is copied under another section: whichever splits the two land in, prepare
    stops before tokenizing or writing, naming both; the real data passes and stats.json holds the findings."""
    cfg = params.load("smoke")
    raw = json.loads(paths.resolve_project_path(cfg.data.raw_file).read_text(encoding="utf-8"))
    copy = [dict(r, id=f"9.{r['section_minor']}.{r['id'].split('.')[2]}", section_major=9)
            for r in raw if r["section_major"] == 2 and r["section_minor"] == 1]
    bad = tmp_path / "copied.json"
    bad.write_text(json.dumps(raw + copy, ensure_ascii=False), encoding="utf-8")
    tokenizer = model.load_tokenizer(cfg.model)
    with pytest.raises(DataError) as e:
        data.prepare(cfg.data.model_copy(update={"raw_file": str(bad)}), tokenizer, cfg.model.max_seq_length)
    assert "near-duplicate paragraphs 2.1" in str(e.value) and "and 9.1" in str(e.value)
    many = checks.run({"train": [paragraph(f"1.{i}", DETECTION) for i in range(1, 9)]}, params.ChecksParams(), False)
    with pytest.raises(DataError) as e:  # 28 pairs: the first 20 named, the count of the rest
        checks.enforce(many, "many.json")
    assert str(e.value).count("near-duplicate paragraphs") == 20 and "... and 8 more" in str(e.value)
    assert "nothing was written" in str(e.value)
    prepared = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length)
    found = prepared.stats["checks"]
    assert found["problems"] == [] and found["paragraphs_checked"] == prepared.stats["paragraphs"]
    data.save(prepared, cfg.data)
    stats = json.loads((data.processed_path(cfg.data) / "stats.json").read_text(encoding="utf-8"))
    assert stats["checks"]["near_duplicates"] == [] and "flagged" in stats["checks"]
    # thresholds set in the params are part of the processed data's identity: other ones check again
    stricter = params.load("smoke", overrides={"checks.leakage": 0.3})
    assert data.current_hash(cfg.data, tokenizer, cfg.model.max_seq_length) is not None
    assert data.current_hash(stricter.data, tokenizer, cfg.model.max_seq_length, stricter.checks) is None


def test_the_processed_data_has_a_dataset_card_with_sources_counts_lengths_and_checks(tiny_model_dir):
    """Two papers prepared together: README.md beside the data in Hugging Face's card layout (YAML front matter
    with the splits' sizes), each paper's source note and licence, counts per paper and split that add up to the
    stats, the length picture, and the checks' line."""
    cfg = params.load("smoke", overrides={"data.raw_file": ["data/raw/yolo_v1.json", "data/raw/resnet.json"],
                                          "data.processed_name": "two-card"})
    prepared = data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length)
    where = data.save(prepared, cfg.data)
    text = (where / "README.md").read_text(encoding="utf-8")
    assert (where / "lengths.png").stat().st_size > 1000
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en", "ko"]
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == prepared.stats["split_sizes"]
    assert "| yolo_v1 | `data/raw/yolo_v1.json` | `data/README.md` | CC BY 4.0 |" in body
    assert "| resnet | `data/raw/resnet.json` | `data/raw/resnet.md` | CC BY 4.0 |" in body
    for paper, per_split in prepared.stats["papers"].items():
        row = f"| {paper} | " + " | ".join(str(per_split[s]) for s in prepared.stats["split_sizes"])
        assert row in body, row
    sizes = prepared.stats["split_sizes"]
    assert f"| all | {sizes['train']} | {sizes['validation']} | {sizes['test']} | {sum(sizes.values())} |" in body
    assert f"| hand-written | {prepared.stats['records']} |" in body
    assert f"{prepared.stats['paragraphs']} examples checked: 0 near-duplicate pairs, 0 validation/test" in body
    assert "![token lengths per split](lengths.png)" in body
