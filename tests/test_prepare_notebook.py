"""prepare_data.ipynb runs headless through papermill and writes the processed dataset."""
import json

import papermill as pm
import pytest

from polo_lib import params, paths

pytestmark = pytest.mark.slow


def run_notebook(name, out, **parameters):
    return pm.execute_notebook(str(paths.NOTEBOOKS_DIR / name), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)


def test_prepare_data_writes_the_processed_dataset(tmp_path, tiny_model_dir):
    run_notebook("prepare_data.ipynb", tmp_path / "out.ipynb", params_file="smoke")
    cfg = params.load("smoke")
    where = paths.processed_dir() / cfg.data.processed_name
    stats = json.loads((where / "stats.json").read_text(encoding="utf-8"))
    assert stats["records"] >= 150 and stats["paragraphs"] >= 40 and stats["fillers_removed"] >= 10
    sizes = stats["split_sizes"]
    assert sizes["train"] > sizes["validation"] >= 1 and sizes["test"] >= 1
    assert set(stats["split_ids"]["train"]).isdisjoint(stats["split_ids"]["test"])
    from datasets import load_from_disk
    dd = load_from_disk(str(where / "dataset"))
    assert [m["role"] for m in dd["train"][0]["messages"]] == ["system", "user", "assistant"]
    executed = json.loads((tmp_path / "out.ipynb").read_text(encoding="utf-8"))
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the token-length histogram is shown inline"
    # the checks prepare ran, in stats.json and shown by the notebook
    assert stats["checks"]["problems"] == [] and stats["checks"]["paragraphs_checked"] == stats["paragraphs"]
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for c in executed["cells"]
                    for o in c.get("outputs", []) if c["id"] == "prepare_data-11b")
    flagged = len(stats["checks"]["flagged"])
    assert (f"{stats['paragraphs']} paragraphs" in shown) if not flagged else ("quality" in shown)


def test_a_typod_parameter_stops_the_notebook_before_any_work(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_notebook("prepare_data.ipynb", tmp_path / "out.ipynb", params_file="smoke", max_seq_lenght=512)
    assert "ParamsError" in e.value.ename and "Did you mean 'max_seq_length'" in e.value.evalue
    assert not paths.processed_dir().exists()
    # the user sees one readable message, not a traceback through pydantic
    executed = json.loads((tmp_path / "out.ipynb").read_text(encoding="utf-8"))
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1
    assert errors[0]["traceback"][0].startswith("ParamsError: 1 problem(s)")


def test_a_failed_prepare_keeps_the_previous_processed_data(tmp_path, tiny_model_dir):
    # the previous data: what the notebook's own cells write (data.prepare, data.save); the failing prepare is
    # `polo run --stages prepare --in-process`, the notebook's calls without a kernel (the notebook itself
    # runs in the test above)
    from polo_lib import data, model, pipeline
    from polo_lib.errors import PoloError

    cfg = params.load("smoke")
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    stats = paths.processed_dir() / cfg.data.processed_name / "stats.json"
    before = stats.read_bytes()
    with pytest.raises(PoloError, match="exceed max_seq_length=64"):
        pipeline.run_pipeline("smoke", overrides={"max_seq_length": 64, "over_length": "fail"}, stages=["prepare"],
                              log=lambda *a: None, in_process=True)
    assert stats.read_bytes() == before
