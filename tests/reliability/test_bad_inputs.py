"""A catalogue of mistakes: each fails with a message naming the file, key or record and the fix,
before any model loads, and leaves nothing half-written (no run folder, processed data intact)."""
import json
import os
import stat

import pytest

from polo_lib import cli, data, model, params, paths, runs
from polo_lib.errors import RunError

pytestmark = pytest.mark.slow
GOOD = None  # the processed data written by the fixture, compared byte for byte after each case


def rec(rid="1.1.1", **kw):
    major, minor, _ = (int(x) for x in rid.split("."))
    return {"id": rid, "section_major": major, "section_minor": minor,
            "original": "The grid predicts boxes.", "simplified": "격자가 상자를 예측합니다.", **kw}


RAW_CASES = {
    "json that does not parse": (b'[{"id": "1.1.1",', "not valid JSON at line 1"),
    "an empty list": (b"[]", "the list is empty"),
    "an object instead of a list": (b'{"id": "1.1.1"}', "expected a JSON list"),
    "a missing field": (json.dumps([{k: v for k, v in rec().items() if k != "simplified"}]).encode(),
                        "missing field 'simplified'"),
    "a wrong type": (json.dumps([rec(section_major="one")]).encode(), "'section_major' must be int"),
    "an empty string": (json.dumps([rec(original=" ")]).encode(), "'original' is empty"),
    "a duplicate id": (json.dumps([rec(), rec()]).encode(), "duplicate id"),
    "an id that contradicts its section": (json.dumps([rec(section_minor=4)]).encode(),
                                           "section_minor is 4 but the id says 1"),
    "bytes that are not UTF-8": (b'[{"id": "1.1.1", "original": "\xc3\x28"}]', "not UTF-8 at byte"),
}


@pytest.fixture
def prepared(tiny_model_dir):
    """smoke's processed data, so each case can prove it was left intact."""
    cfg = params.load("smoke")
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    stats = paths.processed_dir() / cfg.data.processed_name / "stats.json"
    return stats, stats.read_bytes()


def assert_nothing_written(prepared):
    stats, before = prepared
    assert stats.read_bytes() == before, "processed data changed"
    assert not paths.runs_dir().exists() or not any(paths.runs_dir().iterdir()), "a run folder was created"


def polo_fails(capsys, *args) -> str:
    assert cli.main(["run", "smoke", *args]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_bad_raw_data(case, tmp_path, prepared, capsys):
    raw, expected = RAW_CASES[case]
    path = tmp_path / "raw.json"
    path.write_bytes(raw)
    err = polo_fails(capsys, "--set", f"data.raw_file={path}")
    assert "raw.json" in err and expected in err
    assert_nothing_written(prepared)


PARAM_CASES = {
    "an unknown key, with the suggestion": (["--set", "learnig_rate=1e-4"], "Did you mean 'learning_rate'"),
    "learning_rate out of range": (["--set", "learning_rate=0"], "'training.learning_rate' = 0"),
    "lora_r out of range": (["--set", "lora_r=0"], "'lora.r' = 0"),
    "lora_dropout out of range": (["--set", "lora_dropout=1"], "'lora.lora_dropout' = 1"),
    "epochs out of range": (["--set", "epochs=0"], "'training.num_train_epochs' = 0"),
    "batch out of range": (["--set", "per_device_train_batch_size=0"], "'training.per_device_train_batch_size' = 0"),
    "accumulation out of range": (["--set", "gradient_accumulation_steps=-1"],
                                  "'training.gradient_accumulation_steps' = -1"),
    "a wrong type": (["--set", "per_device_train_batch_size=many"], "valid integer"),
    "a model path that does not exist": (["--set", "model_name=./models/nope"], "model_name './models/nope'"),
    "a run id that does not exist": (["--run-id", "20990101-000000-smoke-deadbeef"],
                                     "run '20990101-000000-smoke-deadbeef' not found"),
    "an over-length example under the fail policy": (["--set", "max_seq_length=64", "--set", "over_length=fail"],
                                                     "exceed max_seq_length=64"),
    "an impossible memory setting": (["--set", "per_device_train_batch_size=4096", "--set", "max_seq_length=131072"],
                                     "Lower training.per_device_train_batch_size"),
    "a missing LoRA target module": (["--set", "lora.target_modules=[q_proj, qkv]"], "['qkv'] not found"),
}


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bad_params(case, prepared, capsys):
    args, expected = PARAM_CASES[case]
    err = polo_fails(capsys, *args)
    assert expected in err, err
    assert_nothing_written(prepared)


def test_a_params_file_that_does_not_exist(capsys):
    assert cli.main(["run", "no-such-params"]) == 2
    assert "params file 'no-such-params' not found" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only folder cannot be made")
def test_an_outputs_folder_that_cannot_be_written(tmp_path, monkeypatch, prepared, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("POLO_OUTPUTS", str(locked))
    assert "cannot write to" in polo_fails(capsys)


def test_an_outputs_path_that_is_a_file(tmp_path, monkeypatch, prepared, capsys):
    """What root meets instead of a permission error: outputs points at a file."""
    blocker = tmp_path / "outputs-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("POLO_OUTPUTS", str(blocker))
    err = polo_fails(capsys)
    assert "cannot write to" in err and str(blocker) in err


def test_a_fresh_start_in_a_run_with_checkpoints_is_refused_before_loading(prepared):
    from polo_lib import train

    cfg = params.load("smoke")
    run = runs.open_run(cfg)
    (run.checkpoints / "checkpoint-3").mkdir()
    (run.checkpoints / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.raises(RunError, match="already has checkpoints .*Start a new run"):
        train.resolve_resume(run, "never")
