import subprocess
import sys
from pathlib import Path

from polo_lib import paths


def test_project_root_is_found_from_the_package_not_the_cwd(tmp_path):
    """Notebooks run from notebooks/, papermill --cwd or a Colab clone: paths must not move."""
    code = "from polo_lib import paths; print(paths.PROJ_ROOT); print(paths.resolve_project_path('data/raw'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    root, raw = out.stdout.split()
    assert Path(root) == paths.PROJ_ROOT
    assert (paths.PROJ_ROOT / "pyproject.toml").is_file()
    assert Path(raw) == paths.PROJ_ROOT / "data" / "raw"


def test_env_overrides_move_outputs_cache_and_processed(tmp_path, monkeypatch):
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path / "o"))
    monkeypatch.setenv("POLO_MODEL_CACHE", str(tmp_path / "m"))
    monkeypatch.setenv("POLO_PROCESSED_DIR", str(tmp_path / "p"))
    assert paths.runs_dir() == tmp_path / "o" / "runs"
    assert paths.model_cache_dir() == tmp_path / "m"
    assert paths.processed_dir() == tmp_path / "p"


def test_absolute_paths_stay_absolute(tmp_path):
    assert paths.resolve_project_path(tmp_path) == tmp_path
