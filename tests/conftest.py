"""Shared fixtures. Unsloth is imported first (it patches transformers/trl/peft on import), and
every test writes into temporary outputs; the local model cache is shared across sessions
(outputs/models, git-ignored) so the SmolLM2 conversion happens once per machine."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from polo_lib import paths

# Runs with a real adapter (tiny_run, smollm2_run, tiny_smollm2_run) for the export, serve and explain tests
pytest_plugins = ["adapter_runs"]

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


# `make test` runs whole files on parallel workers (pytest-xdist, --dist loadfile), and xdist hands out the
# files with the most tests first. The files that cost most have few tests, each training or serving through
# its own processes and kernels, so they came last: one could start when the other worker had only a
# minute of work left and run on alone for two more. Longest first instead: these files, heaviest first
# (seconds from `--durations` of the whole suite on 2 cores), then every other file in xdist's own order.
# A file missing here only loses its place in the front; a renamed one should keep its entry.
HEAVY_FILES = {
    "tests/test_sweeps.py": 115,
    "tests/test_device_check.py": 80,
    "tests/reliability/test_crash_determinism_secrets.py": 75,
    "tests/test_task_metrics.py": 65,
    "tests/test_export_gguf.py": 50,
    "tests/test_train_notebook.py": 50,
    "tests/test_benchmarks.py": 45,
    "tests/test_align.py": 45,
    "tests/test_evaluate.py": 42,
    "tests/test_export_serve.py": 39,
    "tests/test_prepare_notebook.py": 32,
    "tests/test_serve_command.py": 30,
    "tests/test_local_models.py": 29,
    "tests/test_notebook_kernel.py": 27,
    "tests/test_train.py": 26,
    "tests/test_browser.py": 22,
    "tests/test_notebooks_in_git.py": 19,
    "tests/test_draft.py": 18,
    "tests/test_runs_cli.py": 17,
    "tests/test_qlora_cpu.py": 15,
}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it, never called
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeaviestFilesFirst(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:  # the queue is complete by the first assignment: reorder it once
                units = sorted(self.workqueue.items(), key=lambda unit: -HEAVY_FILES.get(unit[0], 0))  # stable
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return HeaviestFilesFirst(config, log)


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
    """The tiny random Llama (built once per machine into the shared cache, by polo_testkit.tiny_llama)."""
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


def _text_pdf(pages: list[list[str]]) -> bytes:
    """A minimal PDF with a text layer: each page's lines in Helvetica 11 pt, 14 pt apart ('' is a
    blank line, which pypdf's layout mode reads back as one). An empty page has no text at all,
    as a scanned page has none."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pages_id = font + 2 * len(pages) + 1
    page_ids = []
    for lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        ops += ["(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*" for line in lines]
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        page_ids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (pages_id, content, font)))
    kids = " ".join(f"{i} 0 R" for i in page_ids).encode()
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    return bytes(out)


@pytest.fixture
def text_pdf():
    """Build a small PDF in the test: text_pdf([[lines of page 1], [lines of page 2]]) -> bytes."""
    return _text_pdf
