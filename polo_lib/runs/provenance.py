"""Where a run's code came from: git state (notebooks compared stripped), package versions, and the
notebook filter and Jupyter save hook that keep executed notebooks out of git's changes."""
from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import paths
from ..atomic import atomic_write_json
from .summary import _read_json

log = logging.getLogger(__name__)

PACKAGES = ("torch", "unsloth", "unsloth_zoo", "trl", "transformers", "peft", "datasets", "accelerate",
            "papermill", "bitsandbytes")


# Notebooks are kept in git without their outputs by nbstripout (a maintained tool) as git's clean
# filter: .gitattributes names the files, `make setup` installs the filter (install_notebook_filter).
# The working copy keeps what the user ran; git stores and compares the stripped notebook, so running
# one changes nothing that `git diff` or a commit sees, does not make a run's manifest say dirty, and
# `git pull` does not conflict on outputs. Chosen over Jupytext pairing: the .ipynb stays the one file
# Colab opens from the repository, papermill runs and the tests read, with no paired .py copy to keep
# in step.
# Stripped besides outputs, execution counts and nbstripout's defaults (cell timings, collapsed and
# scrolled flags): what front ends write by themselves when a notebook is opened or run: JupyterLab's
# full language_info (the committed one names only the language) and collapsed headings, VS Code's
# interpreter, papermill's records. Cell ids are kept (--keep-id): nbstripout would renumber them.
NOTEBOOK_FILTER_EXTRA_KEYS = (
    *(f"metadata.language_info.{key}" for key in ("codemirror_mode", "file_extension", "mimetype",
                                                  "nbconvert_exporter", "pygments_lexer", "version")),
    "cell.metadata.jp-MarkdownHeadingCollapsed", "metadata.vscode", "metadata.papermill", "cell.metadata.papermill",
)


def notebook_filter(python: str = sys.executable) -> str:
    """The clean filter's shell command: a notebook on stdin, its stripped form on stdout."""
    return f"{shlex.quote(python)} -m nbstripout --keep-id --extra-keys '{' '.join(NOTEBOOK_FILTER_EXTRA_KEYS)}'"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """git in `root`, with the notebook filter whether or not this clone's config has it (a clone whose
    owner never ran `make setup` still compares notebooks stripped). 60 s: on a busy machine the filter
    (a Python start per notebook saved since git last looked) takes seconds."""
    return subprocess.run(["git", "-c", f"filter.nbstripout.clean={notebook_filter()}", *args], cwd=root,
                          capture_output=True, text=True, timeout=60)


def _refresh(root: Path) -> None:
    """Refresh git's record of file times and sizes (as `git status` does). Without it, files written in
    the same second as the index (a fresh clone) are re-read through the filter at every look: 6 notebooks
    took 14 s per `git diff` on a busy 2-core machine."""
    _git(root, "update-index", "-q", "--refresh")


def install_notebook_filter(root: Path | None = None) -> bool:
    """Set the notebook filter in the git config of the checkout at `root` (this project by default):
    local to that clone, as every git filter (.gitattributes, committed, only names it). False outside
    a git checkout (an unpacked archive), where there is nothing to keep clean.

    Not `filter.nbstripout.required`: after `make clean` removes the venv, git then warns that the filter
    cannot run and stores the notebook as it is, instead of refusing every commit that touches one."""
    root = root or paths.PROJ_ROOT
    command = notebook_filter()
    try:
        subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True, timeout=10, check=True)
        for key, value in (("filter.nbstripout.clean", command), ("filter.nbstripout.smudge", "cat"),
                           ("diff.ipynb.textconv", f"{command} --textconv")):  # `git diff` shows stripped notebooks
            subprocess.run(["git", "config", "--local", key, value], cwd=root, capture_output=True, timeout=10,
                           check=True)
        _refresh(root)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def install_jupyter_hook(config_dir: Path | None = None) -> Path:
    """Have Jupyter servers started from this Python's environment (`make lab`, `jupyter lab`) call
    `after_jupyter_save` after each save: the hook set in <prefix>/etc/jupyter/jupyter_server_config.json
    (or in `config_dir`), whatever else that file holds kept."""
    path = (config_dir or Path(sys.prefix) / "etc" / "jupyter") / "jupyter_server_config.json"
    config = _read_json(path)
    # named through the package (polo_lib.runs), as the configs that earlier setups wrote name it
    config.setdefault("ContentsManager", {})["post_save_hook"] = f"{__package__}.after_jupyter_save"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, config)
    return path


def after_jupyter_save(os_path: str, **_: Any) -> None:
    """Jupyter's post-save hook: when a tracked notebook was saved with nothing changed but its outputs
    (what the filter strips), tell git so, and `git status` stays clean.

    Git's status takes a file whose size changed for modified without reading it, filter or not (nbstripout
    issue 65), so an executed notebook would be listed although `git diff` shows nothing. `git add` of such
    a file stages nothing (its stripped form is what the index holds) and records its new size. A notebook
    with a real change, an untracked one, or one outside a git checkout is left alone. Never raises: a
    failing hook would fail the save."""
    path = Path(os_path)
    if path.suffix != ".ipynb":
        return
    try:
        tracked = _git(path.parent, "ls-files", "--error-unmatch", "--", path.name).returncode == 0
        if tracked and _git(path.parent, "diff", "--quiet", "--", path.name).returncode == 0:
            _git(path.parent, "add", "--", path.name)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("%s: could not refresh git's view of the saved notebook (%s)", path, e)


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repo this package runs from (None outside a git checkout).

    Dirty: a tracked file's content differs from the commit as git would store it, staged or not:
    notebooks are compared stripped, so running one is not a change of the code a run was made with.
    (`git diff`, which reads the content, not `git status`, which takes a changed size for a change.)"""
    try:
        _refresh(root or paths.PROJ_ROOT)
        head = _git(root or paths.PROJ_ROOT, "rev-parse", "HEAD")
        diff = _git(root or paths.PROJ_ROOT, "diff", "HEAD", "--quiet")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode or diff.returncode not in (0, 1):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": diff.returncode == 1}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; None for one that is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
