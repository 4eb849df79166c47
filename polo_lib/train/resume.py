"""A run's checkpoints: which to resume from, a moved run's best one found again, rotation's mtime warning quiet."""
from __future__ import annotations

import logging
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import RunError
from ..notebook import say

log = logging.getLogger(__name__)


def _valid_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").is_file()


def checkpoints_in(folder: Path) -> list[Path]:
    """The trainer's checkpoint-<step> folders in `folder`, oldest first (by step number)."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def checkpoints(run) -> list[Path]:
    """Checkpoints of a run's training, oldest first (by step number)."""
    return checkpoints_in(run.checkpoints)


def resolve_resume(run, resume: str) -> Path | None:
    """'auto': the latest good checkpoint of this run (skipping damaged ones, with a warning) or
    none; 'never': start fresh, refused if the run already has checkpoints; else a checkpoint path."""
    existing = checkpoints(run)
    if resume == "never":
        if existing:
            raise RunError(f"run {run.id} already has checkpoints ({', '.join(p.name for p in existing)}); "
                           "starting it fresh would mix two trainings in one folder. Start a new run ("
                           + say("leave out --run-id", "run_id = None") + ") or continue this one with "
                           + say("--set run.resume=auto", "resume='auto'") + ".")
        return None
    if resume == "auto":
        for p in reversed(existing):
            if _valid_checkpoint(p):
                return p
            log.warning("checkpoint %s is damaged (no trainer_state.json); trying the one before it", p)
        if existing:
            raise RunError(f"run {run.id}: every checkpoint is damaged (no trainer_state.json in "
                           f"{', '.join(p.name for p in existing)}). Start a new run, or delete them and "
                           "resume='never'.")
        return None
    path = Path(resume).expanduser()
    if not path.is_absolute():
        path = run.checkpoints / resume
    if not path.is_dir() or not _valid_checkpoint(path):
        raise RunError(f"resume='{resume}': {path} is not a checkpoint (a folder with trainer_state.json). "
                       f"This run has: {', '.join(p.name for p in existing) or 'none'}.")
    return path


def relocated(best: str | None, checkpoints_dir: Path) -> str | None:
    """Where the best checkpoint is now: the same name in `checkpoints_dir` (pure, table-tested).
    A run folder that moved (outputs/ on Google Drive, mounted again by a new Colab runtime; a
    copy on another machine) keeps the old absolute path in its checkpoints' trainer_state.json."""
    return None if not best else str(Path(checkpoints_dir) / Path(best).name)


def relocate_checkpoint(checkpoint: Path, checkpoints_dir: Path) -> str | None:
    """Point the checkpoint's best_model_checkpoint at this run folder before resuming from it;
    else the trainer cannot find the best model at the end (it only warns, and keeps the last)
    nor keep it from checkpoint rotation. Returns the best checkpoint's path."""
    import json

    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    best = relocated(state.get("best_model_checkpoint"), checkpoints_dir)
    if best != state.get("best_model_checkpoint"):
        log.info("run folder moved: best checkpoint %s is now %s", state["best_model_checkpoint"], best)
        state["best_model_checkpoint"] = best
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return best


class _WithoutMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# transformers 5.17 orders checkpoints for rotation by mtime and, when two were saved less than a second
# apart (fast steps of a small model, on any disk), warns "mtime may not be reliable on this filesystem"
# and orders them by step number instead: what numbered checkpoints want anyway. Red noise in a notebook.
_MTIME_NOISE = _WithoutMessage("mtime may not be reliable on this filesystem")


def _quiet_checkpoint_ordering() -> None:
    logger = logging.getLogger("transformers.trainer_utils")
    if _MTIME_NOISE not in logger.filters:
        logger.addFilter(_MTIME_NOISE)
