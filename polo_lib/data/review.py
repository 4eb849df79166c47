"""Reviewing a teacher's drafts (polo draft) where the researcher already is: a small ipywidgets form in the
notebook (notebooks/review_data.ipynb). Per record: the English paragraph, the draft, an editable answer, and
Accept / Save edit / Reject; every click rewrites the drafts file at once (atomically), so a closed notebook
loses nothing and the next session opens at the first record still a draft.

ipywidgets, not the Gradio page of `polo rate`: the review happens beside the data in the notebook the
researcher prepares it from, one record at a time, with nothing to serve; the rating page compares two
answers blind, which a review does not need.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import DataError
from .formats import STATUSES, load_raw

DECISIONS = ("accepted", "edited", "rejected")


def read(path: str | Path) -> list[dict[str, Any]]:
    """The drafts file's records, validated as prepare reads them (every bad record named)."""
    load_raw(path)  # raises a DataError naming every bad record
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def decide(path: str | Path, record_id: str, status: str, simplified: str | None = None) -> dict[str, Any]:
    """One review decision written at once: the record's status (accepted, edited or rejected) and, when edited,
    the person's Korean; the whole file rewritten atomically. Returns the record as written."""
    if status not in DECISIONS:
        raise DataError(f"a review decides one of {', '.join(DECISIONS)}, not {status!r}")
    records = read(path)
    found = [r for r in records if r["id"] == record_id]
    if not found:
        raise DataError(f"{path}: no record {record_id}")
    record = found[0]
    if status == "edited":
        if not (simplified or "").strip():
            raise DataError(f"record {record_id}: an edit needs the corrected Korean; reject it instead")
        record["simplified"] = simplified.strip()
    record["status"] = status
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return record


def counts(records: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(r.get("status") == s for r in records) for s in STATUSES}


@dataclass
class ReviewForm:
    """The form: `widget` to display; `show(i)` moves to record i. Built by `form`."""
    path: Path
    records: list[dict[str, Any]]
    index: int = 0
    widget: Any = None
    parts: dict[str, Any] = field(default_factory=dict)

    def current(self) -> dict[str, Any] | None:
        return self.records[self.index] if 0 <= self.index < len(self.records) else None

    def next_draft(self, start: int = 0) -> int:
        """The first record still a draft from `start` on (then from the top); len(records) when none is."""
        order = list(range(start, len(self.records))) + list(range(0, start))
        return next((i for i in order if self.records[i].get("status") == "draft"), len(self.records))

    def show(self, i: int) -> None:
        self.index = i
        record, p = self.current(), self.parts
        c = counts(self.records)
        p["counts"].value = (f"{c['draft']} of {len(self.records)} left to review; accepted {c['accepted']}, "
                             f"edited {c['edited']}, rejected {c['rejected']}")
        done = record is None
        for name in ("accept", "edit", "reject"):
            p[name].disabled = done
        if done:
            p["source"].value = "<b>Every record is reviewed.</b> Prepare trains on the accepted and edited ones."
            p["draft"].value, p["answer"].value = "", ""
            return
        p["source"].value = (f"<b>{html.escape(record['id'])}</b> ({record.get('status')}, "
                             f"{html.escape(str(record.get('source')))})<br>{html.escape(record['original'])}")
        p["draft"].value = f"<b>Draft</b><br>{html.escape(record['simplified'])}"
        p["answer"].value = record["simplified"]

    def click(self, status: str) -> None:
        """A decision on the current record: written at once, then the next draft shown."""
        record = self.current()
        if record is None:
            return
        edited = self.parts["answer"].value
        if status == "accepted" and edited.strip() != record["simplified"].strip():
            status = "edited"  # Accept after changing the text keeps the change
        written = decide(self.path, record["id"], status, edited if status == "edited" else None)
        self.records[self.index] = written
        self.show(self.next_draft(self.index + 1))


def form(path: str | Path) -> ReviewForm:
    """The review form over a drafts file, opened at the first record still a draft."""
    import ipywidgets as w

    path = Path(path)
    made = ReviewForm(path, read(path))
    layout = w.Layout(width="100%")
    made.parts = {"counts": w.Label(), "source": w.HTML(layout=layout), "draft": w.HTML(layout=layout),
                  "answer": w.Textarea(layout=w.Layout(width="100%", height="10em")),
                  "accept": w.Button(description="Accept", button_style="success"),
                  "edit": w.Button(description="Save edit", button_style="info"),
                  "reject": w.Button(description="Reject", button_style="danger")}
    p = made.parts
    p["accept"].on_click(lambda _: made.click("accepted"))
    p["edit"].on_click(lambda _: made.click("edited"))
    p["reject"].on_click(lambda _: made.click("rejected"))
    made.widget = w.VBox([p["counts"], p["source"], p["draft"], w.Label("Your Korean (edit, then Save edit):"),
                          p["answer"], w.HBox([p["accept"], p["edit"], p["reject"]])])
    made.show(made.next_draft())
    return made
