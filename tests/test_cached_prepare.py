"""prepare is a cached stage: with its inputs unchanged (raw file, data params, tokenizer and chat
template) a second `polo run` skips it, saying so with the hash; a changed input prepares again,
and a notebook that loads the data never trains on splits made from other inputs."""
import json
import shutil

import pytest

from polo_lib import data, model, params, paths, pipeline, runs

pytestmark = pytest.mark.slow


def edited_raw(tmp_path):
    """The raw file with one explanation reworded."""
    raw = paths.resolve_project_path(params.load("smoke").data.raw_file)
    records = json.loads(raw.read_text(encoding="utf-8"))
    records[0]["simplified"] += " 다시 말해, 한눈에 봅니다."
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)


def retemplated_tokenizer(tmp_path, tiny_model_dir):
    """The tiny model with one character of its chat template changed."""
    copy = tmp_path / "tiny-retemplated"
    shutil.copytree(tiny_model_dir, copy)
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text(encoding="utf-8").replace("+ '|>\\n' +", "+ '|>\\n\\n' +", 1),
                        encoding="utf-8")
    return str(copy)


def test_a_second_run_skips_prepare_and_says_so_with_the_hash(tiny_model_dir, record_agrees):
    lines = []
    first = pipeline.run_pipeline("smoke", stages=["prepare"], log=lines.append, in_process=True)
    assert first.manifest()["stages"]["prepare"]["status"] == "finished"
    key = data.prepared_hash(params.load("smoke").data)
    assert key and len(key) == 12
    second = pipeline.run_pipeline("smoke", stages=["prepare"], log=lines.append)
    stage = second.manifest()["stages"]["prepare"]
    assert stage["status"] == "skipped" and stage["inputs_hash"] == key
    assert any(f"prepare: skipped, inputs unchanged (hash {key})" in line for line in lines)
    assert not (second.notebooks / "prepare_data.ipynb").exists()  # no kernel was started for it
    assert runs.lookup(second.id).manifest()["status"] == "finished"
    record_agrees(first)  # prepare-only runs get their report too
    record_agrees(second)


def test_a_changed_raw_file_or_tokenizer_prepares_again(tmp_path, tiny_model_dir):
    cfg = params.load("smoke")
    pipeline.prepare_stage(cfg)
    assert pipeline.prepared_already(cfg) == data.prepared_hash(cfg.data)
    raw = params.load("smoke", overrides={"data.raw_file": edited_raw(tmp_path)})
    assert raw.data.processed_name == cfg.data.processed_name  # same folder: only the hash can tell
    assert pipeline.prepared_already(raw) is None
    other = params.load("smoke", overrides={"model.model_name": retemplated_tokenizer(tmp_path, tiny_model_dir)})
    assert pipeline.prepared_already(other) is None
    assert pipeline.prepared_already(params.load("smoke", max_seq_length=700)) is None
    assert pipeline.prepared_already(cfg)  # nothing above wrote anything


def test_loading_for_training_prepares_again_after_the_raw_file_changed(tmp_path, tiny_model_dir):
    cfg = params.load("smoke")
    pipeline.prepare_stage(cfg)
    raw = params.load("smoke", overrides={"data.raw_file": edited_raw(tmp_path)})
    dataset = data.load_or_prepare(raw)
    texts = [m["content"] for split in dataset.values() for ex in split["messages"] for m in ex]
    assert any("다시 말해, 한눈에 봅니다." in t for t in texts)
    assert data.prepared_hash(raw.data) == data.inputs_hash(raw.data, model.load_tokenizer(raw.model),
                                                             raw.model.max_seq_length)
