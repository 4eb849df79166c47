"""The train notebook end to end through papermill (and `polo run`), on the tiny model."""
import json
import stat

import pandas as pd
import papermill as pm
import pytest
import torch

from polo_lib import atomic, cli, data, model, params, paths, pipeline, runs
from polo_lib.errors import PoloError

pytestmark = pytest.mark.slow


TOKEN = "hf_FAKEtokenForTheNotebookSecretTest0123"


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    """One `polo run smoke --stages prepare,train` for the tests that only read its run folder, with an HF
    token in the environment of polo and its kernel."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("pipeline_run")
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        mp.setenv("HF_TOKEN", TOKEN)
        yield pipeline.run_pipeline("smoke", stages=["prepare", "train"], log=lambda *a: None)


def test_polo_run_leaves_a_complete_run_folder(pipeline_run, record_agrees):
    run = pipeline_run
    record_agrees(run)
    for name in ("params.yaml", "manifest.json", "summary.json", "report.md",
                 "notebooks/train.ipynb", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/tokenizer_config.json", "logs/train_log.csv", "plots/loss.png"):
        assert (run.path / name).is_file(), name
    assert list((run.logs / "tensorboard").glob("events.out.tfevents.*"))
    assert list(run.checkpoints.glob("checkpoint-*"))
    manifest = run.manifest()
    assert manifest["status"] == "finished" and manifest["git"]["commit"]
    assert set(manifest["stages"]) == {"prepare", "train"}
    assert all(s["status"] == "finished" for s in manifest["stages"].values())
    # the preflight prepared the splits to check them: saved as the prepare stage, no second kernel
    prepare = manifest["stages"]["prepare"]
    cfg = params.load("smoke")
    assert prepare["by"] == "preflight"
    tokenizer = model.load_tokenizer(cfg.model)
    assert prepare["inputs_hash"] == data.inputs_hash(cfg.data, tokenizer, cfg.model.max_seq_length)
    assert not (run.notebooks / "prepare_data.ipynb").exists()
    assert manifest["model"]["load_in_4bit"] == {"asked": False, "applied": False}
    assert manifest["versions"]["unsloth"] and manifest["versions"]["trl"]
    assert params.load_resolved(run.params_path) == params.load("smoke")
    log = pd.read_csv(run.logs / "train_log.csv")
    losses = log["loss"].dropna()
    assert len(losses) == 6 and losses.iloc[-3:].mean() < losses.iloc[:3].mean()  # the loss fell
    evals = log["eval_loss"].dropna()
    assert log.loc[log["eval_loss"].notna(), "step"].iloc[0] == 0  # a baseline before training
    assert evals.min() < evals.iloc[0]
    summary = run.summary().training
    assert summary.steps == 6 and 0 < summary.trainable_pct < 5
    executed = json.loads((run.notebooks / "train.ipynb").read_text(encoding="utf-8"))
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))


def test_an_hf_token_in_the_environment_never_reaches_the_run_folder_nor_the_executed_notebook(pipeline_run):
    """The kernel had the token too: not in train.ipynb's outputs, nor in any other file of the run
    (tests/reliability/test_crash_determinism_secrets.py checks a run made in process, evaluation included)."""
    assert (pipeline_run.notebooks / "train.ipynb").is_file()
    leaked = [p for p in pipeline_run.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_every_file_of_a_finished_run_is_readable_as_the_umask_says(pipeline_run):
    """manifest.json, params.yaml, summary.json, report.md, train_log.csv and the adapter's weights
    were 0600 (private temp files renamed into place): now 0644 / 0755 under umask 022."""
    mask = atomic.umask()
    modes = {str(p.relative_to(pipeline_run.path)): stat.S_IMODE(p.stat().st_mode)
             for p in [pipeline_run.path, *pipeline_run.path.rglob("*")]}
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (0o777 if (pipeline_run.path / p).is_dir() else 0o666) & ~mask}
    assert "adapter/adapter_model.safetensors" in modes and wrong == {}


def test_the_adapter_reloads_with_plain_peft_and_with_unsloth(pipeline_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pipeline_run.adapter)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is YOLO?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(**ids).logits
    tuned = PeftModel.from_pretrained(base, str(pipeline_run.adapter))
    with torch.no_grad():
        tuned_logits = tuned(**ids).logits
        out = tuned.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert not torch.allclose(base_logits, tuned_logits)  # the adapter changes the model
    assert out.shape[1] > ids["input_ids"].shape[1]

    from unsloth import FastLanguageModel
    lm, utok = FastLanguageModel.from_pretrained(model_name=str(pipeline_run.adapter), max_seq_length=256,
                                                 load_in_4bit=False, dtype=torch.float32)
    FastLanguageModel.for_inference(lm)
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=utok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_train_notebook_alone_on_a_fresh_clone_takes_papermill_parameters(tmp_path, tiny_model_dir):
    """A fresh clone (or a Colab runtime) has no data/processed/: train.ipynb opened alone prepares
    it, announced, and `-p max_steps 2` must train 2 steps, not the file's 6; smoke's eval_steps 3
    (sized for its 6) gives way to the auto cadence instead of stopping the run before it starts."""
    cfg = params.load("smoke")
    assert not data.processed_path(cfg.data).exists()
    pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "train.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"params_file": "smoke", "max_steps": 2, "learning_rate": 1e-3},
                        kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
    run = runs.lookup()
    assert run.params().training.max_steps == 2 and run.params().training.learning_rate == 1e-3
    assert run.params().overridden == ("training.learning_rate", "training.max_steps")
    assert run.summary().training.steps == 2
    assert run.manifest()["training"]["plan"]["eval_steps"] == 1  # evaluations at steps 1 and 2
    assert (data.processed_path(cfg.data) / "dataset").is_dir()
    executed = (tmp_path / "out.ipynb").read_text(encoding="utf-8")
    assert "preparing it now, as prepare_data.ipynb does" in executed


def test_a_failing_stage_marks_the_run_failed_and_names_the_cell(tiny_model_dir, record_agrees):
    # no preflight, and a raw file that is not there: the train notebook's data cell fails
    with pytest.raises(PoloError, match=r"(?s)stage .train. failed: DataError: .*missing.json: no such file"
                                        r".*train.ipynb, cell"):
        pipeline.run_pipeline("smoke", overrides={"data.raw_file": "data/raw/missing.json"}, stages=["train"],
                              preflight=False, log=lambda *a: None)
    run = runs.lookup(status=None)
    manifest = run.manifest()
    assert manifest["status"] == "failed"
    assert "DataError" in manifest["error"]["message"]
    assert "train.ipynb" in manifest["error"]["where"]
    assert manifest["stages"]["train"]["status"] == "failed"
    record_agrees(run)
    assert "failed: DataError" in (run.path / "report.md").read_text(encoding="utf-8")


def test_the_same_params_and_seed_train_the_same_run_to_the_last_digit_in_a_kernel_or_in_process(
        pipeline_run, record_agrees, capsys):
    """`polo run --in-process`: each stage's functions in the polo process, the notebook's own calls: the same
    records and, with the same params and seed, the same training as the notebook's kernel made in another
    process, to the last digit; no executed notebook."""
    assert cli.main(["run", "smoke", "--stages", "prepare,train", "--in-process"]) == 0
    shown = capsys.readouterr().out
    run = runs.lookup()
    assert run.id != pipeline_run.id and "[2/2] train: in this process" in shown and "  train 6/6 (100%)" in shown
    record_agrees(run)
    manifest, theirs = run.manifest(), pipeline_run.manifest()
    assert manifest["status"] == "finished" and manifest["stages"].keys() == theirs["stages"].keys()
    assert manifest["stages"]["prepare"]["by"] == "preflight" and manifest["model"] == theirs["model"]
    assert list(run.notebooks.iterdir()) == [] and (run.adapter / "adapter_model.safetensors").is_file()
    assert run.params_path.read_bytes() == pipeline_run.params_path.read_bytes()

    def log(r):
        return pd.read_csv(r.logs / "train_log.csv").drop(columns=["tokens_per_s"])  # a wall-clock rate
    pd.testing.assert_frame_equal(log(run), log(pipeline_run), check_exact=True)


def test_a_failing_stage_in_process_marks_the_run_failed_and_names_the_line(tiny_model_dir, record_agrees):
    with pytest.raises(PoloError, match=r"(?s)stage .train. failed: DataError: .*missing.json: no such file"
                                        r".*at polo_lib/data/.*\(train stage, in process\)") as caught:
        pipeline.run_pipeline("smoke", overrides={"data.raw_file": "data/raw/missing.json"}, stages=["train"],
                              preflight=False, log=lambda *a: None, in_process=True)
    assert type(caught.value.__cause__).__name__ == "DataError"  # the stage's own error, kept as the cause
    run = runs.lookup(status=None)
    manifest = run.manifest()
    assert manifest["status"] == "failed" and manifest["stages"]["train"]["status"] == "failed"
    assert "DataError" in manifest["error"]["message"] and "train stage, in process" in manifest["error"]["where"]
    record_agrees(run)
    assert "failed: DataError" in (run.path / "report.md").read_text(encoding="utf-8")


def test_polo_run_rejects_unknown_overrides_before_any_work(capsys):
    assert cli.main(["run", "smoke", "--set", "learnig_rate=1e-4"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert not paths.runs_dir().exists()


def test_the_executed_train_notebook_shows_whole_texts_whole_paths_and_ends_on_the_report(pipeline_run, monkeypatch):
    """What a person reads in train.ipynb: the samples before and after training with every text
    whole (pandas cut each at 50 characters), a bar while they are written, the saved paths whole
    (the adapter's was cut where the run id starts), each time figure with what it measures, no
    Unsloth 'Dropping columns' notice, and the report rendered last (not a bare PosixPath)."""
    import html

    from polo_lib import train

    executed = json.loads((pipeline_run.notebooks / "train.ipynb").read_text(encoding="utf-8"))
    cells = {c.get("id"): c for c in executed["cells"]}

    def shown(cell_id: str, kind: str = "text/html") -> str:
        outputs = cells[cell_id].get("outputs", [])
        return "".join("".join(o.get("data", {}).get(kind, "")) + "".join(o.get("text", "")) for o in outputs)

    monkeypatch.setenv("POLO_PROCESSED_DIR", str(pipeline_run.path.parents[2] / "processed"))  # the fixture's
    validation = data.load_processed(params.load("smoke").data)["validation"]
    for cell_id in ("train-17", "train-23"):  # before; before and after
        for text in validation["original"][:3]:
            assert len(text) > 50 and html.escape(text) in shown(cell_id), (cell_id, text[:60])
    assert "before training" in shown("train-23") and "after training" in shown("train-23")
    assert "samples" in shown("train-17", "text/plain")  # the bar (a widget; its text form names it)
    assert str(pipeline_run.adapter) in shown("train-21")
    assert html.escape(train.TIME_FIGURES["baseline_eval_seconds"]) in shown("train-19")
    everything = json.dumps(executed)
    assert train.DROPPING_COLUMNS not in everything
    assert executed["cells"][-1]["id"] == "train-25"
    report = shown("train-25", "text/markdown")
    assert report.startswith(f"# Run {pipeline_run.id}") and "data:image/png;base64," in report  # the loss curve
    assert "PosixPath" not in shown("train-25", "text/plain")
