"""A notebook's parameters cell: which globals are parameters, resolved into Params (from_notebook)."""
from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ParamsError, bullet_list
from .loading import ALIASES, _leaf_paths, _suggest, load
from .schema import Params

# Names a notebook's parameters cell may define that are not params fields.
NOTEBOOK_NAMES = {"params_file", "run_id", "run_ids", "sweep_id", "overrides", "REPO_URL", "OUTPUTS_ON_DRIVE"}
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)  # what papermill can inject
# The first line of the cell papermill injects after the parameters cell (its translator's comment,
# `papermill.translators.PythonTranslator.codify`): `-p epochs 5` arrives as "# Parameters\nepochs = 5\n".
PAPERMILL_INJECTED = "# Parameters"


def assigned_names(source: str) -> list[str]:
    """Names a cell assigns at its top level (`x = 1`, `x: int = 1`, `a, b = 1, 2`), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell that never ran as Python assigned nothing
        return []
    names: list[str] = []

    def add(target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                add(element)

    for node in tree.body:
        for target in node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []:
            add(target)
    return names


def _injected(source: str) -> bool:
    return source.lstrip().startswith(PAPERMILL_INJECTED + "\n")


def parameter_names(history: Sequence[str]) -> set[str] | None:
    """The notebook parameters as the kernel last ran them, from its input history (IPython's `In`):
    the names the parameters cell assigned (the last cell run that sets `params_file`, papermill's
    injected cell aside) and those papermill injected after it (`-p` names, typos included).
    None: no such cell was run in this kernel.

    Not every global: after a first Run All the kernel also holds `dataset`, `lm`, `session`...,
    which are results, not parameters: a second Run All must not take them for unknown ones."""
    cells = [c for c in history if isinstance(c, str)]
    start = next((i for i in range(len(cells) - 1, -1, -1)
                  if not _injected(cells[i]) and "params_file" in assigned_names(cells[i])), None)
    after = cells[start:] if start is not None else cells
    names = set(assigned_names(cells[start])) if start is not None else set()
    injected = [c for c in after if _injected(c)]
    for cell in injected:
        names |= set(assigned_names(cell))
    return names if start is not None or injected else None


def from_notebook(namespace: Mapping[str, Any], default_file: str | Path | None = None) -> Params:
    """Resolve params from a notebook's globals: `params_file` < the knobs of its parameters cell.

    In a kernel, only the parameters cell's names and papermill's injected ones are parameters
    (`parameter_names`); other globals (a dataset, a model from the run before) are not. papermill
    only warns about an unknown `-p` name and injects it anyway; here an unknown name among the
    parameters is an error, so `-p epoch 5` fails instead of silently training the file's epochs.
    Outside a kernel (no `In` history), every plain value in `namespace` is a parameter.
    """
    from ..notebook import show_errors_briefly

    show_errors_briefly()
    knobs, problems = {}, []
    leaves = _leaf_paths()
    declared = parameter_names(namespace["In"]) if isinstance(namespace.get("In"), list) else None
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES or name in NOTEBOOK_NAMES:
            continue
        if declared is not None and name not in declared:  # a result of a later cell, not a parameter
            continue
        if declared is None and not isinstance(value, _PLAIN):  # modules, functions, a Run: not parameters
            continue
        if name in ALIASES or name in leaves:
            knobs[name] = value
        else:
            hint = _suggest(name, sorted({*ALIASES, *leaves, *NOTEBOOK_NAMES}))
            problems.append(f"unknown notebook parameter '{name}' = {value!r}.{hint}")
    if problems:
        raise ParamsError(f"{len(problems)} problem(s) in notebook parameters:\n{bullet_list(problems)}")
    params_file = namespace.get("params_file") or default_file
    if params_file is None:
        raise ParamsError("the notebook's parameters cell must set params_file")
    overrides = namespace.get("overrides") or {}  # dotted keys, passed by `polo run --set`
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"notebook parameter 'overrides' must be a mapping of dotted keys, got {overrides!r}")
    return load(params_file, overrides=overrides, **knobs)
