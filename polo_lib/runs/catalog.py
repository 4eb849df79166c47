"""Every run folder: `lookup` by id, prefix, folder or latest (REF_HELP), and `registry`, the table of all runs."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import RunError
from .folder import Run
from .summary import read_summary

LATEST = "latest"
STATUSES = ("running", "finished", "failed", "pruned", "damaged")  # damaged: no readable manifest (registry)
# What made a run: `polo run` or a notebook, a step of a queue, a trial of a sweep (manifest keys).
KINDS = ("run", "queue", "sweep")
REF_HELP = ("a run id, a unique prefix of one, a run folder, or latest (the newest finished run made by polo run "
            "or a notebook; latest:sweep, latest:queue or latest:any for sweep trials, queue steps or any run)")


def run_folders() -> list[Path]:
    """Every run folder (one with params.yaml), oldest first: run ids start with their UTC time."""
    root = paths.runs_dir()
    return sorted(p for p in root.iterdir() if (p / "params.yaml").is_file()) if root.exists() else []


def kind_of(manifest: dict[str, Any]) -> str:
    """'sweep' for a sweep trial, 'queue' for a queue step, else 'run' (polo run, a notebook)."""
    return "sweep" if manifest.get("sweep") else "queue" if manifest.get("queue") else "run"


def lookup(ref: str | Path | None = LATEST, status: str | None = "finished") -> Run:
    """The one way to name a run, in every command and notebook (REF_HELP): its id, a unique
    prefix of it, its folder's path, or `latest` / None: the newest run with `status` (None: any
    status) made by `polo run` or a notebook. Sweep trials and queue steps are runs too, but
    `latest` never means one of them unless asked: `latest:sweep`, `latest:queue`, `latest:any`."""
    folders = run_folders()
    ref = LATEST if ref is None else str(ref).strip()
    if ref == LATEST or ref.startswith(LATEST + ":"):
        return _latest(folders, ref.partition(":")[2] or "run", status)
    if os.sep in ref or ref.startswith(".") or (Path(ref).is_dir() and (Path(ref) / "params.yaml").is_file()):
        folder = Path(ref).expanduser()
        if not (folder / "params.yaml").is_file():
            raise RunError(f"{ref} is not a run folder (no params.yaml in it). {REF_HELP[0].upper()}{REF_HELP[1:]}.")
        folder = folder.resolve()
        return Run(folder.name, folder)
    exact = [p for p in folders if p.name == ref]
    matches = exact or [p for p in folders if p.name.startswith(ref)]
    if len(matches) == 1:
        return Run(matches[0].name, matches[0])
    if matches:
        raise RunError(f"run '{ref}' is ambiguous: {len(matches)} runs start with it "
                       f"({', '.join(p.name for p in matches[:5])}). Give more of the id.")
    known = [p.name for p in folders[-5:]]
    raise RunError(f"run '{ref}' not found in {paths.runs_dir()}. Latest runs: {', '.join(known) or 'none'}. "
                   f"Give {REF_HELP}.")


def _latest(folders: list[Path], kind: str, status: str | None) -> Run:
    if kind not in (*KINDS, "any"):
        raise RunError(f"'latest:{kind}': unknown kind; use latest, latest:sweep, latest:queue or latest:any.")
    others: dict[str, int] = {}
    for path in reversed(folders):
        run = Run(path.name, path)
        try:
            manifest = run.manifest()
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a damaged run (polo list shows it) is never `latest`
        if status is not None and manifest.get("status") != status:
            continue
        found = kind_of(manifest)
        if kind in ("any", found):
            return run
        others[found] = others.get(found, 0) + 1
    what = {"run": "run made by polo run or a notebook", "queue": "queue step", "sweep": "sweep trial",
            "any": "run"}[kind]
    hint = "; ".join(f"{n} {k} run(s): latest:{k}" for k, n in others.items())
    raise RunError(f"no {status + ' ' if status else ''}{what} in {paths.runs_dir()}"
                   + (f" (there are {hint})" if hint else "")
                   + ". Train one first (notebooks/train.ipynb, `polo run` or `make demo`).")


def tag_replicate(run: Run, group: str, index: int, of: int, seed: int) -> dict[str, Any]:
    """Mark `run` as replicate `index` (0-based) of `of` in replicate group `group`, trained with
    training.seed `seed`: the manifest's `replicates`, which `replicate_groups` reads back. The one
    way a run joins a group (`polo run --seeds`, queue items with `seeds:`, tests)."""
    return run.update_manifest(replicates={"group": group, "index": int(index), "of": int(of), "seed": int(seed)})


def replicate_groups() -> dict[str, list[Run]]:
    """Every replicate group: group id -> its runs (any status), ordered by replicate index."""
    groups: dict[str, list[tuple[int, Run]]] = {}
    for path in run_folders():
        run = Run(path.name, path)
        try:
            tag = run.manifest().get("replicates")
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
            continue
        if isinstance(tag, dict) and tag.get("group"):
            groups.setdefault(tag["group"], []).append((int(tag.get("index", 0)), run))
    return {g: [r for _, r in sorted(members, key=lambda m: m[0])] for g, members in groups.items()}


REGISTRY_COLUMNS = ["run_id", "kind", "params", "status", "created", "steps", "epochs", "loss_first", "loss_last",
                    "eval_loss_first", "eval_loss_best", "early_stopped", "tokens_per_s", "trainable_%",
                    "chrf_base", "chrf_tuned", "train_seconds", "group", "problem"]


def _registry_row(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": path.name, "problem": None}
    problems = []
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        row.update(kind=kind_of(manifest), params=manifest.get("params_name"), status=manifest.get("status"),
                   created=manifest.get("created"))
        tag = manifest.get("replicates")
        if isinstance(tag, dict) and tag.get("group"):
            row["group"] = f"{tag['group']} #{int(tag.get('index', 0)) + 1}/{tag.get('of')}"
        if manifest.get("status") == "failed" and manifest.get("error"):
            problems.append(f"failed: {manifest['error'].get('message', '')[:120]}")
    except FileNotFoundError:
        row["status"] = "damaged"
        problems.append("no manifest.json")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        row["status"] = "damaged"
        problems.append(f"manifest.json unreadable ({type(e).__name__})")
    try:
        summary = read_summary(path / "summary.json")
    except RunError as e:
        row["status"] = "damaged"
        problems.append(f"summary.json {str(e).split(': ', 1)[1]}")
    else:
        if summary.training:
            row.update(summary.training.model_dump(by_alias=True, include=set(REGISTRY_COLUMNS) | {"trainable_pct"}))
        if summary.evaluation:
            row.update(chrf_base=summary.evaluation.base.get("chrf"), chrf_tuned=summary.evaluation.tuned.get("chrf"))
    row["problem"] = "; ".join(problems) or None
    return row


def registry(status: str | None = None):
    """Every run in outputs/runs/ as a DataFrame, newest last. Failed, running and damaged
    runs are listed (status, problem), never a crash."""
    import pandas as pd

    root = paths.runs_dir()
    rows = [_registry_row(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")] \
        if root.exists() else []
    df = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    if status is not None:
        df = df[df["status"] == status]
    return df.set_index("run_id")
