"""The docs site's generated pages say what the code says: the params reference is read from the pydantic
models, the CLI reference from argparse, the layer picture from tests/test_layers.py, the notebook list
from notebooks/ (docs/hooks/reference.py), and `mkdocs build --strict` builds them into the site."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from test_layers import LAYERS

from polo_lib import cli, params, paths

HOOK = paths.PROJ_ROOT / "docs" / "hooks" / "reference.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("docs_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(page: str, key: str) -> str:
    """The table row of the params page that documents `key` (section.field)."""
    rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"{key}: {len(rows)} rows"
    return rows[0]


def test_params_page_has_every_field_with_its_type_default_and_description(reference):
    page = reference.params_page()
    for section, cls in params.SECTIONS.items():
        for name in cls.model_fields:
            row(page, f"{section}.{name}")
    assert "| one of `auto`, `float16`, `bfloat16`, `float32` | `\"auto\"` |" in row(page, "model.dtype")
    assert ">= `16`, <= `131072`" in row(page, "model.max_seq_length")
    # the comment written with a field in the source is its description while it has no `description=`
    assert "instead of training a 3B model in fp32 on the CPU for days" in row(page, "model.require_gpu")
    assert "| `epochs` | `training.num_train_epochs` |" in page


def test_a_changed_field_description_or_default_changes_the_params_page(reference, monkeypatch):
    before = row(reference.params_page(), "training.learning_rate")
    info = params.TrainingParams.model_fields["learning_rate"]
    monkeypatch.setattr(info, "description", "the step size, changed by the test")
    monkeypatch.setattr(info, "default", 3e-4)
    after = row(reference.params_page(), "training.learning_rate")
    assert after != before
    assert "the step size, changed by the test" in after and "`0.0003`" in after


def test_cli_page_has_every_command_and_option(reference):
    page = reference.cli_page()
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## `polo {name}` {{#polo-{name}}}" in page
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in page.split(f"## `polo {name}`")[1].split("\n## ")[0], (name, option)
    assert "| `--port` | `8000` |" in page


def test_a_changed_help_changes_the_cli_page(reference, monkeypatch):
    build = cli.build_parser

    def with_new_help():
        parser = build()
        serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
        next(a for a in serve._actions if "--max-queue" in a.option_strings).help = "how many may wait (test)"
        return parser

    before = reference.cli_page()
    monkeypatch.setattr(cli, "build_parser", with_new_help)
    after = reference.cli_page()
    assert "how many may wait (test)" in after and "how many may wait (test)" not in before


def test_architecture_picture_is_the_layer_test_table(reference):
    assert reference.layers() == {name: sorted(modules) for name, modules in LAYERS.items()}
    block = reference.layers_block()
    for name, modules in LAYERS.items():
        assert f"| {name} | {', '.join(f'`{m}`' for m in sorted(modules))} |" in block


def test_notebooks_page_lists_every_notebook_with_its_parameters(reference):
    block = reference.notebooks_block()
    notebooks = sorted((paths.PROJ_ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 6
    for nb in notebooks:
        assert f"## `{nb.name}`" in block
        cell = next("".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]
                    if "parameters" in c.get("metadata", {}).get("tags", []))
        assert cell.strip() in block, nb.name


def test_site_builds_strict_with_the_pages_generated_from_the_code(reference, tmp_path):
    """What `make docs` and .ci/run run: every nav page present, every link and anchor found, and the built
    references are the generated ones (not a stale copy)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=paths.PROJ_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    params_html = (tmp_path / "reference" / "params" / "index.html").read_text(encoding="utf-8")
    for section, cls in params.SECTIONS.items():
        for name in cls.model_fields:
            assert f"<code>{section}.{name}</code>" in params_html
    cli_html = (tmp_path / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert 'id="polo-serve"' in cli_html and "<code>--max-queue</code>" in cli_html
    assert 'class="mermaid"' in (tmp_path / "architecture" / "index.html").read_text(encoding="utf-8")
    assert (tmp_path / "benchmarks" / "results" / "2026-12-07-vm.json").is_file()
