"""What every subcommand shares: --set parsing, the help format, terminal width, JSON output, quiet
Unsloth imports for commands that train nothing, the API key."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from ..errors import ParamsError


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; values parsed as YAML (1e-4 -> float, true -> bool, [a, b] -> list)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set '{item}': expected key=value, e.g. --set learning_rate=1e-4")
        parsed = yaml.safe_load(value) if value.strip() else ""
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default that is a value; options that are off or empty unless given say nothing."""

    def _get_help_string(self, action):
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d) or not action.help:
            return action.help
        return super()._get_help_string(action)


def _width() -> int:
    """The terminal's width (COLUMNS, else the terminal, else 120 when output is not a terminal)."""
    return shutil.get_terminal_size((120, 24)).columns


def _records(table) -> list[dict[str, Any]]:
    """A table as JSON records: NaN as null, the index (run_id) as a field."""
    frame = table.reset_index() if table.index.name else table
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@contextlib.contextmanager
def _quiet_unless_json(args):
    """With --json, what long commands print on the way (stages, progress) goes to stderr, so
    stdout holds the JSON alone for a script to read."""
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


# polo list, most telling first: columns that do not fit the terminal are dropped from the right
LIST_COLUMNS = ["kind", "status", "params", "steps", "eval_loss_best", "loss_last", "chrf_base", "chrf_tuned",
                "train_seconds", "group", "problem", "created", "epochs", "loss_first", "eval_loss_first",
                "early_stopped", "tokens_per_s", "trainable_%"]


def _unsloth_first() -> None:
    """Unsloth patches transformers when imported first; the export, serve, chat and explain paths load
    models to answer with, never to train: without Unsloth's "training on CPU" banner."""
    from ..model import import_unsloth

    import_unsloth(training=False)


def _api_key(args) -> str | None:
    """--api-key, else POLO_API_KEY from the environment (the way a key stays off the command line)."""
    return args.api_key if args.api_key is not None else os.environ.get("POLO_API_KEY")


def _choices_help(choices: dict[str, str]) -> str:
    """'name: what it is; ...' for a registry's choices (argparse shows the list itself)."""
    return "; ".join(f"{name}: {what}" for name, what in choices.items())

