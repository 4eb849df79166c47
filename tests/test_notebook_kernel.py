"""train.ipynb as a person runs it in JupyterLab: one kernel, the parameters cell edited by hand,
Run All, then Run All again in the same kernel (nbclient, the client Jupyter's own tools use;
papermill starts a new kernel per run and so never sees the second Run All).

The quick look trains 2 steps with a params file whose early stopping (patience 2) has no room in
them: it must train without early stopping, say so and record it, where it used to stop at the
plan cell; the second Run All used to stop at the first cell, taking the first run's `dataset`
for a typo'd parameter."""
from __future__ import annotations

import ast
import copy
import re

import nbformat
import pandas as pd
import pytest
import tomllib
import yaml

from polo_lib import colab, paths, pipeline, runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twice(tiny_model_dir, tmp_path_factory):
    """Both rounds' cells (with their outputs), the runs they made, and what the kernel imported."""
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("run_all_twice")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLO_OUTPUTS", str(root / "outputs"))
        mp.setenv("POLO_PROCESSED_DIR", str(root / "processed"))
        # smoke with early stopping and the task metrics on: what a real params file has (cpu.yaml:
        # patience 2, during_training 3), on the tiny model
        body = yaml.safe_load((paths.PARAMS_DIR / "smoke.yaml").read_text(encoding="utf-8"))
        body["training"].update(early_stopping_patience=2)
        body["evaluation"].update(during_training=1, during_training_max_new_tokens=8)
        quick = root / "quick.yaml"
        quick.write_text(yaml.safe_dump(body), encoding="utf-8")
        nb = nbformat.read(paths.NOTEBOOKS_DIR / "train.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = (cell.source.replace('params_file = "auto"', f'params_file = "{quick}"')
                       .replace("max_steps = None", "max_steps = 2"))
        assert f'"{quick}"' in cell.source and "max_steps = 2" in cell.source
        client = NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                                resources={"metadata": {"path": str(paths.NOTEBOOKS_DIR)}},
                                kernel_manager_class=pipeline.local_kernel_manager())
        rounds = []
        with client.setup_kernel():
            for _ in range(2):
                for index, code in enumerate(nb.cells):
                    if code.cell_type == "code":
                        client.execute_cell(code, index)  # raises CellExecutionError on an error
                rounds.append(copy.deepcopy(nb.cells))
            probe = "from polo_lib import colab\nsorted(colab.imported_distributions())"
            nb.cells.append(nbformat.v4.new_code_cell(probe))
            probe = client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        imported = set(ast.literal_eval(probe.outputs[0]["data"]["text/plain"]))  # a list of names
        made = sorted(paths.runs_dir().iterdir())
        yield rounds, [runs.lookup(p.name, status=None) for p in made], imported


def cell(cells, call: str):
    return next(c for c in cells if c.cell_type == "code" and call in c.source)


def test_run_all_twice_in_one_kernel_trains_twice(twice):
    rounds, made, _ = twice
    assert len(made) == 2 and [r.manifest()["status"] for r in made] == ["finished", "finished"]
    for cells in rounds:
        assert not [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [r.summary().training.steps for r in made] == [2, 2]


def test_a_quick_look_too_short_for_the_files_patience_trains_without_it_said_and_recorded(twice):
    rounds, made, _ = twice
    shown = cell(rounds[-1], "train.check_before_loading(").outputs[0]["data"]["text/plain"]
    assert "off for this run (patience 2 asked" in shown and "note" in shown
    for run in made:
        plan = run.manifest()["training"]["plan"]
        assert (plan["early_stopping_patience"], plan["early_stopping_patience_asked"]) == (0, 2)
        assert plan["eval_steps"] == 1 and plan["evaluations"] == 2  # smoke's 3 gave way to auto
        notes = run.summary().training.plan_notes
        assert notes == plan["notes"] and any(n.startswith("early stopping off for this run") for n in notes)
        report = (run.path / "report.md").read_text(encoding="utf-8")
        assert all(f"- {n}" in report.split("## Warnings")[1] for n in notes)
        log = pd.read_csv(run.logs / "train_log.csv")
        assert log["loss"].notna().sum() == 2 and log["eval_loss"].notna().sum() == 3  # step 0, 1, 2


def test_the_data_and_train_cells_write_nothing_on_stderr(twice):
    """No red in JupyterLab: progress bars render as widgets (ipywidgets installed: no "TqdmWarning:
    IProgress not found"), preparing the data on a fresh clone is announced, not warned."""
    rounds, _, _ = twice
    for number, cells in enumerate(rounds, 1):
        for call in ("data.load_or_prepare(", "train.build(", "train.fit("):
            stderr = [o["text"] for o in cell(cells, call).outputs if o.get("name") == "stderr"]
            assert stderr == [], f"Run All {number}, the cell with {call}: {stderr}"
    first_data = cell(rounds[0], "data.load_or_prepare(").outputs
    assert any("preparing it now" in o.get("text", "") for o in first_data if o.get("name") == "stdout")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in rounds[0] for o in c.get("outputs", []))  # a bar drawn as a widget


def test_what_train_imports_is_in_its_colab_install_list(twice):
    """Every dependency of this project that the train notebook's kernel imported is one the Colab
    cell installs for train.ipynb (or Colab's own torch and kernel): a new import that Colab lacks
    fails here, not on Colab three cells after the install."""
    _, _, imported = twice
    project = tomllib.loads((paths.PROJ_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = {colab.canonical(re.match(r"[A-Za-z0-9._-]+", d).group(0)) for d in project["dependencies"]}
    stack = set(colab.read_pins(paths.PROJ_ROOT / colab.STACK_FILE))
    planned = {colab.canonical(p) for p in colab.NEEDS["train.ipynb"].packages} | stack | set(colab.RUNTIME)
    assert "kiwipiepy" in imported and "sacrebleu" in imported  # the task metrics ran: the check sees them
    assert sorted((imported & deps) - planned) == []
