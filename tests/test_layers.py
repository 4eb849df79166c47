"""Imports only point down: the layers of README's Layout section, read from the source with `ast`.

A module may import modules of its own layer or of a lower one; no module imports `cli`;
nothing imports `deploy` but `cli`; there are no import cycles. A new module must be given a
layer here, which is the moment to decide where it belongs.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "polo_lib"

LAYERS = {  # lowest first
    # device: pure decisions about this machine, importing only errors and unsloth_first (to ask Unsloth's
    # NF4 probe after Unsloth is imported); in core because params'
    # `auto` choice (GPU recipe where CUDA is) asks it. notebook: IPython hooks, importing only errors.
    "core": {"paths", "atomic", "errors", "prompts", "registry", "params", "notebook", "device", "progress",
             "unsloth_first"},
    "models": {"model", "local_models", "inference"},
    "stages": {"data", "train", "align", "task_eval", "trackers", "stats", "evaluate", "metrics", "plots"},
    "records": {"runs", "ratings", "reports"},
    # judge: an LLM judge over an evaluation's pairs (reads runs, uses stats), asked by the CLI
    # replicates: replicate seeds (runs the pipeline; compare's scores pooled over a group's seeds)
    "orchestration": {"pipeline", "preflight", "queues", "compare", "replicates", "judge", "sweeps"},
    # colab: the notebooks' Colab install (standard library only, imported by nothing)
    "edges": {"deploy", "cli", "colab"},
}
RANK = {module: i for i, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)


def modules() -> dict[str, Path]:
    """Dotted names under polo_lib ('runs', 'sweeps.spec', 'deploy.serve') -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _is_module(dotted: str) -> bool:
    path = PACKAGE / Path(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(name: str, path: Path) -> set[str]:
    """polo_lib modules that `name` imports, at module level or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("polo_lib.") for a in node.names if a.name.startswith("polo_lib.")}
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # from . import x / from .x import y / from ..x import y
            base = package[: len(package) - (node.level - 1)]
            stem = ".".join([*base, *([node.module] if node.module else [])])
        elif node.module and node.module.split(".")[0] == "polo_lib":
            stem = node.module.removeprefix("polo_lib").lstrip(".")
        else:
            continue
        if stem:
            found.add(stem)
        found |= {f"{stem}.{a.name}".lstrip(".") for a in node.names if _is_module(f"{stem}.{a.name}".lstrip("."))}
    return found - {name}


def top(name: str) -> str:
    return name.split(".")[0]


GRAPH = {name: imports_of(name, path) for name, path in modules().items()}


def test_every_module_has_a_layer():
    missing = sorted({top(m) for m in GRAPH} - set(RANK))
    assert not missing, f"give these modules a layer in tests/test_layers.py (and DESIGN.md): {missing}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name):
    if top(name) not in RANK:
        pytest.skip(f"{name} has no layer yet (test_every_module_has_a_layer fails)")
    upward = [f"{t} ({NAMES[RANK[top(t)]]})" for t in GRAPH[name]
              if top(t) in RANK and top(t) != top(name) and RANK[top(t)] > RANK[top(name)]]
    assert not upward, f"{name} ({NAMES[RANK[top(name)]]}) imports upward: {upward}. Move the shared " \
                       "code down, or pass what it needs as an argument."


def test_no_module_imports_the_cli_and_only_the_cli_imports_deploy():
    users = {name: sorted(t for t in targets if top(t) in ("cli", "deploy"))
             for name, targets in GRAPH.items() if top(name) not in ("cli", "deploy")}
    assert not {k: v for k, v in users.items() if v}


def test_no_import_cycles():
    graph = {top(n): set() for n in GRAPH}
    for name, targets in GRAPH.items():
        graph[top(name)] |= {top(t) for t in targets if top(t) != top(name) and top(t) in graph}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_every_import_names_a_module():
    """A relative import inside a function is resolved only when the function runs: after a module
    moves into a package, `from .data import x` left one level short fails in the middle of a run."""
    unknown = {name: sorted(t for t in targets if not _is_module(t)) for name, targets in GRAPH.items()}
    unknown = {name: targets for name, targets in unknown.items() if targets}
    assert not unknown, f"imports of no polo_lib module: {unknown}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser itself: a relative import from a lower module to a higher one is found."""
    fake = tmp_path / "params.py"
    fake.write_text("def f():\n    from . import runs\n    from .pipeline import train_stage\n")
    assert imports_of("params", fake) >= {"runs", "pipeline"}


def _map(docstring: str, heading_names: list[str]) -> dict[str, set[str]]:
    """{heading: names} from lines like '  core   paths, atomic, ...' (a package written 'sweeps/')."""
    out = {}
    for line in docstring.splitlines():
        words = line.split(None, 1)
        if line.startswith("  ") and len(words) == 2 and words[0] in heading_names:
            out[words[0]] = {n.strip().rstrip("/") for n in words[1].split(",")}
    return out


def test_the_package_docstring_shows_this_table():
    import polo_lib

    assert _map(polo_lib.__doc__, NAMES) == LAYERS, "polo_lib/__init__.py's layer lines differ from LAYERS"


def test_every_package_docstring_names_its_modules():
    """Each package (deploy/, sweeps/, metrics/, data/, params/, runs/, train/, inference/, judge/) lists its modules
    in its docstring ('  name   what it does')."""
    for package in ("deploy", "sweeps", "metrics", "data", "params", "runs", "train", "inference", "cli",
                    "judge"):
        init = PACKAGE / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        listed = {line.split()[0].removesuffix(".py") for line in doc.splitlines()
                  if line.startswith("  ") and line.split()}
        present = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("__")}
        assert present <= listed, f"polo_lib/{package}/__init__.py does not describe {sorted(present - listed)}"


def test_polo_lib_never_imports_the_test_kit():
    """polo_testkit (the tiny test model's builder, test support) is not part of the library users import:
    polo_lib names it only as a "module:function" string (local_models.BUILDERS), imported to build
    tiny-llama, so no polo_lib module has an import statement for it, at module level or in a function."""
    def kit(name: str | None) -> bool:
        return (name or "").split(".")[0] == "polo_testkit"

    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for path in modules().values()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if (isinstance(node, ast.Import) and any(kit(a.name) for a in node.names))
             or (isinstance(node, ast.ImportFrom) and not node.level and kit(node.module))]
    assert not found, f"polo_lib imports the test kit: {found}. Name the function in local_models.BUILDERS instead."
