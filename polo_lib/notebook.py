"""What polo_lib does differently inside a Jupyter kernel: brief errors, a run marked failed
when a cell raises, live charts. Outside IPython every function here does nothing.

A leaf module (it imports only `errors`), so params, runs and train can use it; it sits in the
core layer rather than with the edges because the recipe's own calls install these hooks.
"""
from __future__ import annotations

from collections.abc import Callable

from .errors import PoloError


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def in_notebook() -> bool:
    """True in a Jupyter kernel (JupyterLab, papermill), False in a terminal IPython or plain Python."""
    shell = _shell()
    return shell is not None and "IPKernelApp" in shell.config


def say(command_line: str, notebook: str) -> str:
    """The words for where the user is: a fix in notebook terms (parameters) in a Jupyter kernel,
    in command-line terms (options) elsewhere."""
    return notebook if in_notebook() else command_line


def show_errors_briefly() -> None:
    """In a notebook, a PoloError (a mistake the user can fix) shows as its message alone, not a
    60-line traceback through TRL or pydantic. The cell still fails with the error's name and
    message, so papermill and `polo run` still stop and report it."""
    shell = _shell()
    if shell is None or getattr(shell, "_polo_brief_errors", False):
        return

    def brief(shell, etype, value, tb, tb_offset=None):
        stb = [f"{etype.__name__}: {value}"]
        shell._showtraceback(etype, value, stb)  # IPython does not call it for custom exceptions
        return stb

    shell.set_custom_exc((PoloError,), brief)
    shell._polo_brief_errors = True


def on_cell_error(record: Callable[[str, str], None]) -> None:
    """In a notebook, call `record(message, where)` when a cell raises (where: the cell's number
    and first line). One watcher per kernel: a later call replaces the earlier one."""
    shell = _shell()
    if shell is None:
        return

    def on_cell(result) -> None:
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            cell = (getattr(result.info, "raw_cell", "") or "").strip().splitlines()
            record(f"{type(error).__name__}: {error}", f"cell {result.execution_count}: {cell[0] if cell else ''}")

    for cb in list(shell.events.callbacks["post_run_cell"]):
        if getattr(cb, "_polo_watcher", False):
            shell.events.unregister("post_run_cell", cb)
    on_cell._polo_watcher = True  # type: ignore[attr-defined]
    shell.events.register("post_run_cell", on_cell)


# Whole texts in a table: wrapped at the cell's width with their own line breaks, a long path broken
# anywhere rather than cut, read from the top left (pandas cuts every cell at 50 characters).
READABLE_CSS = {"white-space": "pre-wrap", "overflow-wrap": "anywhere", "text-align": "left",
                "vertical-align": "top", "min-width": "16em"}


def readable(table):
    """`table` to read, not to compute with: every text whole and wrapped (a pandas Styler; Jupyter
    shows it as HTML, `.data` is the DataFrame). A model's `<|im_end|>` shows as text, not as markup."""
    return table.style.format(escape="html").set_properties(**READABLE_CSS).set_table_styles(
        [{"selector": "th", "props": [("text-align", "left"), ("vertical-align", "top")]}])
