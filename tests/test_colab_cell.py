"""The notebooks' Colab install cell, run here as Colab would run it (google.colab importable),
up to the first step that fails: a placeholder URL and a clone that fails must stop the cell
with a message, not three cells later with a ModuleNotFoundError."""
from __future__ import annotations

import json
import sys
import types

import pytest

from polo_lib import paths


def colab_cell() -> str:
    nb = json.loads((paths.NOTEBOOKS_DIR / "train.ipynb").read_text(encoding="utf-8"))
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
    assert "_steps" not in namespace


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
