"""The docs pages that are read off the code at build time, so they cannot drift from it.

MkDocs loads this file as a hook (mkdocs.yml `hooks:`):

- `on_files` adds `reference/params.md` (from the pydantic models in polo_lib.params), `reference/cli.md`
  (from polo_lib.cli.build_parser) and every file of benchmarks/results/ (so the benchmarks page links
  the committed results and `mkdocs build --strict` fails on a link to one that is gone);
- `on_page_markdown` replaces `<!-- generated: layers -->` (tests/test_layers.py's LAYERS table, with a
  Mermaid picture) and `<!-- generated: notebooks -->` (each notebook's heading, introduction and
  parameters cell) in the hand-written pages.

tests/test_docs.py calls the same functions, changes a field's description and a command's help and
sees the page change, and builds the site.
"""
from __future__ import annotations

import ast
import io
import json
import os
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKERS = ("<!-- generated: layers -->", "<!-- generated: notebooks -->")


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --- params ---------------------------------------------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """A model's field name -> the comment written with it in the source: the comment lines right above
    the field and the comment at the end of its line(s). Read with `ast` and `tokenize` from the class's
    own source, wherever it lives."""
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        text = " ".join([*above, *trailing]).strip()
        if text:
            out[node.target.id] = text
    return out


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "list"
    return getattr(annotation, "__name__", str(annotation))


def _limits(info) -> str:
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <=",
             "pattern": "matches"}
    parts = []
    for meta in info.metadata:
        for attr, word in words.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} `{value}`")
    return ", ".join(parts)


def _default(info) -> str:
    from pydantic_core import PydanticUndefined

    if info.is_required() or info.default is PydanticUndefined:
        return "required"
    value = info.default
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def params_page() -> str:
    """reference/params.md: every section and field of polo_lib.params, read from the pydantic models."""
    from polo_lib import params

    lines = [
        "# Params reference",
        "",
        "Generated from the pydantic models in `polo_lib/params/schema.py` each time the site is built "
        "(`docs/hooks/reference.py`): every key a params file or `--set` may name, its type, default, "
        "limits and the description written with it in the code. A params file names only what it "
        "changes; unknown keys, wrong types and out-of-range values fail before anything loads, all at once.",
        "",
    ]
    for section, cls in params.SECTIONS.items():
        comments = field_comments(cls)
        lines += [f"## `{section}`", ""]
        if cls.__doc__:
            lines += [" ".join(cls.__doc__.split()), ""]
        lines += ["| key | type | default | limits | description |", "|---|---|---|---|---|"]
        schema = cls.model_json_schema(mode="validation")["properties"]
        for name, info in cls.model_fields.items():
            about = info.description or comments.get(name, "")
            kind = _type_name(info.annotation)
            if kind == "str" and schema.get(name, {}).get("enum"):  # choices checked by a validator (a registry's)
                kind = "one of " + ", ".join(f"`{a}`" for a in schema[name]["enum"])
            lines.append(f"| `{section}.{name}` | {_cell(kind)} | {_cell(_default(info))} "
                         f"| {_cell(_limits(info))} | {_cell(about)} |")
        lines.append("")
    lines += ["## Short names", "",
              "A notebook's parameters cell and `polo run --set` may use these names, and every field name "
              "that is unique across the sections (`learning_rate`, `lora_alpha`, ...):", "",
              "| short name | key |", "|---|---|"]
    lines += [f"| `{short}` | `{dotted}` |" for short, dotted in params.ALIASES.items()]
    lines.append("")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------------

def _shown_default(action) -> str:
    """The default as `--help` shows it (polo_lib.cli._Help): values only, not off / empty / None."""
    import argparse

    d = action.default
    if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d):
        return ""
    return f"`{d}`"


def cli_page() -> str:
    """reference/cli.md: every `polo` subcommand and its arguments, read from polo_lib.cli.build_parser."""
    import argparse

    from polo_lib import cli

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: the same page everywhere
    try:
        parser = cli.build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        lines = [
            "# CLI reference",
            "",
            "Generated from `polo_lib/cli/`'s argparse parser each time the site is built "
            "(`docs/hooks/reference.py`); `polo COMMAND --help` prints the same. "
            f"{_cell(parser.description or '')}",
            "",
            "| command | what it does |",
            "|---|---|",
        ]
        lines += [f"| [`polo {name}`](#polo-{name}) | {_cell(helps.get(name, ''))} |" for name in sub.choices]
        lines.append("")
        for name, p in sub.choices.items():
            lines += [f"## `polo {name}` {{#polo-{name}}}", "", _cell(helps.get(name, "")), "",
                      "```text", p.format_usage().strip(), "```", "",
                      "| argument | default | choices | description |", "|---|---|---|---|"]
            for action in p._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                names = ", ".join(action.option_strings) or (action.metavar or action.dest)
                if action.required and action.option_strings:
                    names += " (required)"
                choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
                lines.append(f"| `{_cell(names)}` | {_cell(_shown_default(action))} | {_cell(choices)} "
                             f"| {_cell(action.help or '')} |")
            lines.append("")
        return "\n".join(lines)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


# --- layers and notebooks, inside hand-written pages ----------------------------------------------------

def layers() -> dict[str, list[str]]:
    """tests/test_layers.py's LAYERS table (lowest first), read with `ast` (the test module is not imported)."""
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAYERS" for t in node.targets):
            return {k: sorted(v) for k, v in ast.literal_eval(node.value).items()}
    raise LookupError("tests/test_layers.py has no LAYERS table")


def layers_block() -> str:
    """The layers as a Mermaid picture (highest on top, arrows for 'imports') and a table."""
    table = layers()
    names = list(table)
    lines = ["```mermaid", "flowchart TB"]
    for name in reversed(names):
        lines.append(f'    {name}["<b>{name}</b><br/>{", ".join(table[name])}"]')
    for upper, lower in zip(reversed(names), list(reversed(names))[1:]):
        lines.append(f"    {upper} -->|imports| {lower}")
    lines += ["```", "", "| layer (lowest first) | modules |", "|---|---|"]
    lines += [f"| {name} | {', '.join(f'`{m}`' for m in mods)} |" for name, mods in table.items()]
    return "\n".join(lines)


def notebooks_block() -> str:
    """Each notebook in notebooks/: its title, its introduction and its parameters cell."""
    out = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        markdown = next(("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"), "")
        params_cell = next(("".join(c["source"]) for c in nb["cells"]
                            if "parameters" in c.get("metadata", {}).get("tags", [])), None)
        title, _, intro = markdown.partition("\n")
        out += [f"## `{path.name}`: {title.lstrip('# ').strip()}", "", intro.strip(), ""]
        if params_cell is not None:
            out += ["Its parameters cell:", "", "```python", params_cell.strip(), "```", ""]
    return "\n".join(out)


# --- MkDocs hooks ---------------------------------------------------------------------------------------

GENERATED = {"reference/params.md": params_page, "reference/cli.md": cli_page}
BLOCKS = {MARKERS[0]: layers_block, MARKERS[1]: notebooks_block}


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, page in GENERATED.items():
        files.append(File.generated(config, uri, content=page()))
    for path in sorted(RESULTS.iterdir()):
        if path.is_file() and not path.name.endswith(".tmp"):
            files.append(File.generated(config, f"benchmarks/results/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    for marker, block in BLOCKS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, block())
    return markdown
