"""The sweep folder, outputs/sweeps/<sweep_id>/: its id, the resolved sweep.yaml that reopens it
(resume, the results notebook), where its study.db lives, and the latest sweep."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import yaml

from .. import paths, runs
from ..atomic import atomic_write_text
from ..errors import RunError
from .spec import Sweep, SweepFile, validate


def sweeps_dir() -> Path:
    return paths.outputs_dir() / "sweeps"


def storage_url(folder: Path) -> str:
    """The Optuna storage of a sweep: study.db (SQLite) in its folder."""
    return f"sqlite:///{folder / 'study.db'}"


def new_sweep_id(spec: SweepFile) -> str:
    """UTC time + sweep name + hash of the resolved sweep, like run ids."""
    base = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{spec.name}-{spec.short_hash()}"
    sweep_id, n = base, 1
    while (sweeps_dir() / sweep_id).exists():
        n += 1
        sweep_id = f"{base}-{n}"
    return sweep_id


def open_folder(sweep: Sweep, engine: str) -> tuple[str, Path]:
    """A new sweep folder holding the resolved sweep.yaml; (sweep id, folder)."""
    runs.check_writable(sweeps_dir())
    sweep_id = new_sweep_id(sweep.spec)
    folder = sweeps_dir() / sweep_id
    folder.mkdir(parents=True)
    body = {**sweep.spec.to_dict(), "source": sweep.spec.source}
    atomic_write_text(folder / "sweep.yaml", f"# engine: {engine}; objective resolved to {sweep.metric} "
                      f"({sweep.direction})\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return sweep_id, folder


def get_sweep(sweep_id: str) -> tuple[Sweep, Path]:
    """A sweep's validated file and folder, from its resolved sweep.yaml."""
    from ..notebook import show_errors_briefly

    show_errors_briefly()
    folder = sweeps_dir() / sweep_id
    if not (folder / "sweep.yaml").is_file():
        known = sorted(p.name for p in sweeps_dir().glob("*") if p.is_dir())[-5:] if sweeps_dir().exists() else []
        raise RunError(f"sweep '{sweep_id}' not found in {sweeps_dir()}. Latest sweeps: {', '.join(known) or 'none'}.")
    body = yaml.safe_load((folder / "sweep.yaml").read_text(encoding="utf-8"))
    return validate(body, origin=str(folder / "sweep.yaml")), folder


def latest_sweep() -> str:
    """The newest sweep with a study (sweep ids start with their UTC time)."""
    found = sorted(p.name for p in sweeps_dir().glob("*") if (p / "study.db").is_file())
    if not found:
        raise RunError(f"no sweep in {sweeps_dir()}: run one first (`polo sweep smoke`).")
    return found[-1]
