"""The notebooks and pipeline.py make the same recipe calls in the same order, so a notebook
run by hand and `polo run` / queues / sweeps cannot drift apart again.

Calls are read with `ast` as `name.attr` on the recipe's modules (data, model, train, evaluate,
runs, reports) and on `run`; the notebooks may add calls that only show something (DISPLAY)
and the calls that open a stage (OPENING), which `run_pipeline` and the notebook do for the stage.
"""
import ast
import inspect
import json

import pytest

from polo_lib import paths, pipeline

RECIPE_NAMES = {"data", "model", "train", "align", "evaluate", "runs", "reports", "run"}
OPENING = {"params.from_notebook", "runs.open_run", "runs.lookup"}
DISPLAY = {"data.describe", "model.parameter_table", "train.sample", "train.side_by_side", "reports.rendered",
           "evaluate.speed_table", "data.split_table", "evaluate.by_paper", "data.checks_table"}


def calls(tree: ast.AST) -> list[str]:
    """`name.attr(...)` calls in source order (an outer call before the calls in its arguments)."""
    found = []

    class Visitor(ast.NodeVisitor):
        def visit_Call(self, node):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in RECIPE_NAMES:
                found.append(f"{f.value.id}.{f.attr}")
            self.generic_visit(node)

    Visitor().visit(tree)
    return found


def stage_calls(stage) -> list[str]:
    return calls(ast.parse(inspect.getsource(stage)))


def notebook_calls(notebook: str) -> list[str]:
    cells = json.loads((paths.NOTEBOOKS_DIR / notebook).read_text(encoding="utf-8"))["cells"]
    tree = ast.parse("\n".join("".join(c["source"]) for c in cells
                               if c["cell_type"] == "code" and "google.colab" not in "".join(c["source"])))
    return [c for c in calls(tree) if c not in OPENING | DISPLAY]


@pytest.mark.parametrize("notebook,stage", [
    ("prepare_data.ipynb", pipeline.prepare_stage),
    ("train.ipynb", pipeline.train_stage),
    ("align.ipynb", pipeline.align_stage),
    ("evaluate.ipynb", pipeline.evaluate_stage),
])
def test_notebook_makes_the_stages_calls_in_order(notebook, stage):
    assert notebook_calls(notebook) == stage_calls(stage), (
        f"{notebook} and pipeline.{stage.__name__} disagree: change both together (a call that only "
        "shows something belongs in DISPLAY here)")


def test_every_stage_notebook_is_checked():
    assert set(pipeline.STAGES.values()) == {"prepare_data.ipynb", "train.ipynb", "align.ipynb", "evaluate.ipynb"}


def test_a_reordered_recipe_is_caught():
    source = "model.load(cfg)\ntrain.build(lm)\ntrain.fit(s)\n"
    swapped = "model.load(cfg)\ntrain.fit(s)\ntrain.build(lm)\n"
    assert calls(ast.parse(source)) != calls(ast.parse(swapped))
    assert calls(ast.parse("model.check_memory(model.estimate_memory(cfg))")) == \
        ["model.check_memory", "model.estimate_memory"]
