"""The verdict line: parsed from a reply, appended to judge.jsonl one record at a time, read back."""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import append_line

# Strict: the reply's last non-empty line, exactly this (spaces around it aside).
VERDICT_LINE = re.compile(r"^VERDICT:\s*(A|B|TIE)$")
REMINDER = ("Your reply did not end with the verdict line. Answer again, ending with exactly one last line: "
            "VERDICT: A, VERDICT: B or VERDICT: TIE.")


def parse_verdict(reply: str | None) -> str | None:
    """"A", "B" or "TIE" from the reply's last non-empty line ("VERDICT: A"), else None."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    match = VERDICT_LINE.match(lines[-1]) if lines else None
    return match.group(1) if match else None



def _append(path: Path, record: dict[str, Any], lock: threading.Lock) -> None:
    """One verdict appended at once (atomic.append_line: one write, fsynced, a cut last line ended first)."""
    with lock:
        append_line(path, json.dumps(record, ensure_ascii=False))


def read_verdicts(path: Path) -> list[dict[str, Any]]:
    """judge.jsonl's records, oldest first; a line cut by a crash (not JSON) is skipped: its pair is
    judged again on the next run."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and {"id", "order", "judge_model", "rubric_hash"} <= set(record):
            out.append(record)
    return out


def _key(record: Mapping[str, Any]) -> tuple:
    return (str(record["id"]), record["order"], record.get("against"), record.get("against_evaluation"),
            record["judge_model"], record["rubric_hash"])
