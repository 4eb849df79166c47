"""Shared fixtures. Unsloth is imported first (it patches transformers/trl/peft on import), and
every test writes into temporary outputs; the local model cache is shared across sessions
(outputs/models, git-ignored) so the SmolLM2 conversion happens once per machine."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from polo_lib import paths

# Before anything imports transformers.
os.environ.setdefault("POLO_MODEL_CACHE", str(paths.PROJ_ROOT / "outputs" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no test may reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Parallel workers (`make test`: pytest-xdist) share the cores: each worker, and the notebook kernels
# and `polo` processes it starts, gets its share of torch threads. Two workers on 2 cores with 2
# threads each spin against each other: the suite took 561 s that way, 330 s with 1 thread each.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    share = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = share
from polo_lib.model import import_unsloth  # noqa: E402

import_unsloth()


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Runs and processed data of a test go to its own tmp folder, never the repo's."""
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("POLO_PROCESSED_DIR", str(tmp_path / "processed"))
    return tmp_path


SHARED_MODEL_CACHE = Path(os.environ["POLO_MODEL_CACHE"])


@pytest.fixture(scope="session")
def shared_model_cache() -> Path:
    """The model cache every test session shares (built once per machine; test_local_models points
    each of its tests at an empty one, and at this one for the slow builds it only reads)."""
    return SHARED_MODEL_CACHE


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama (built once per session into the shared cache)."""
    from polo_lib import local_models

    return Path(local_models.resolve("tiny-llama"))


def _assert_record_agrees(run) -> None:
    """report.md, summary.json and manifest.json of a run tell one story: the run's status, each
    stage's status, and the stage times (runs end through reports.conclude)."""
    manifest = run.manifest()
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert f"- status: **{manifest['status']}**" in report, (manifest["status"], report[:400])
    stages = manifest.get("stages") or {}
    for stage, entry in stages.items():
        assert re.search(rf"^\| {stage} \| {entry['status']} \|", report, re.M), (stage, entry["status"])
    summary = run.summary()
    assert summary.stage_seconds == {k: v.get("seconds") for k, v in stages.items()}
    finished = [e["id"] for e in manifest.get("evaluations") or [] if e["status"] == "finished"]
    assert [e.id for e in summary.evaluations] == finished  # every finished evaluation, oldest first
    if finished:  # the latest is the summary's and the report's evaluation
        assert summary.evaluation.id == finished[-1] and f"Evaluation `{finished[-1]}`, the latest" in report


@pytest.fixture
def record_agrees():
    """Check that a run's report, summary and manifest agree (see _assert_record_agrees)."""
    return _assert_record_agrees
