"""Notebooks orchestrate, polo_lib computes: stripped, one parameters cell, no def/class, few imports."""
import ast
import json
import re

import pytest

from polo_lib import paths

NOTEBOOKS = sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb"))
ALLOWED_IMPORTS = {"polo_lib", "sys", "os", "subprocess", "pandas", "matplotlib", "IPython",
                   "google"}  # google.colab.drive, in the Colab cell only


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def python_source(cell) -> str:
    """Cell source with IPython magics (`!cmd`, `%pip`) blanked so ast can parse it."""
    lines = "".join(cell["source"]).splitlines()
    return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in lines)


def test_every_notebook_starts_with_the_same_colab_cell_naming_itself():
    """One install cell, identical everywhere but for the notebook it names: any notebook opened alone
    in Colab installs what that notebook imports (polo_lib.colab.NEEDS), nothing more."""
    from polo_lib import colab

    firsts = {p.name: "".join(next(c for c in load(p)["cells"] if c["cell_type"] == "code")["source"])
              for p in NOTEBOOKS}
    own = {name: f'colab.install(_repo_dir, "{name}")' for name in firsts}
    assert all(own[name] in cell for name, cell in firsts.items()), "each cell installs for its own notebook"
    assert len({cell.replace(own[name], "") for name, cell in firsts.items()}) == 1, \
        f"the Colab cells differ beyond the notebook's name: {sorted(firsts)}"
    assert set(firsts) <= set(colab.NEEDS), f"no Colab install list for {sorted(set(firsts) - set(colab.NEEDS))}"
    cell = next(iter(firsts.values()))
    assert 'if "google.colab" in sys.modules:' in cell and "from polo_lib import colab" in cell
    assert "returncode != 0" in cell and "YOUR-ORG" in cell  # the clone checked; the placeholder refused


def test_every_notebook_is_listed_where_a_user_looks():
    """The README's JupyterLab paragraph and the Colab install lists name every notebook in notebooks/ (the
    docs' notebooks page is generated from the folder itself)."""
    names = {p.stem for p in NOTEBOOKS}
    assert {"prepare_data", "train", "evaluate", "compare_runs", "sweep_results", "explain"} <= names
    readme = (NOTEBOOKS[0].parent.parent / "README.md").read_text(encoding="utf-8")
    lab = readme[readme.index("**JupyterLab**"):readme.index("**papermill**")]
    assert all(f"`{name}`" in lab for name in names), sorted(n for n in names if f"`{n}`" not in lab)
    from polo_lib import colab

    assert {p.name for p in NOTEBOOKS} == set(colab.NEEDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = load(path)
    # papermill refuses a notebook without these ("No kernel name found").
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["language_info"]["name"] == "python"
    assert all(c.get("id") for c in nb["cells"]), "every cell needs an id (nbformat 4.5; papermill warns)"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "commit notebooks stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell_with_params_file(path):
    cells = [c for c in load(path)["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1
    assigned = {t.id for node in ast.parse(python_source(cells[0])).body
                for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
    assert {"params_file", "run_ids", "sweep_id", "paper", "drafts_file"} & assigned  # what the notebook works on


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_functions_classes_or_undeclared_imports(path):
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(python_source(cell))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: move the function/class into polo_lib with a test"
            if isinstance(node, ast.Import):
                mods = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                mods = {(node.module or "").split(".")[0]}
            else:
                continue
            assert mods <= ALLOWED_IMPORTS, f"{path.name}: imports {mods - ALLOWED_IMPORTS}"
