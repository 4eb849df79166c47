"""The dataset card written beside the processed data (README.md, Hugging Face's dataset-card layout: YAML front
matter, then sections): where each paper's records come from and under which licence, counts per paper and
split, the records' review status, token lengths (lengths.png beside it), and what prepare's checks found.

The licence of a paper is read from its note: <raw file>.md when there is one (polo draft writes one), else, for
the project's own files in data/raw, data/README.md (the first sentence that says "licensed under").
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from .. import paths

LICENSED = re.compile(r"licensed under (.+?)\.(?:\s|$)", re.IGNORECASE)  # to the sentence end
HF_LICENSES = {"cc by 4.0": "cc-by-4.0", "cc by-sa 4.0": "cc-by-sa-4.0", "cc0": "cc0-1.0", "mit": "mit",
               "apache 2.0": "apache-2.0"}


def source_note(raw_file: str) -> tuple[Path | None, str | None]:
    """(the note describing a raw file, the licence it states), each None when not found."""
    raw = paths.resolve_project_path(raw_file)
    # the project's own raw files without a note of their own are described by data/README.md
    shared = (paths.DATA_DIR / "README.md",) if raw.parent == paths.DATA_DIR / "raw" else ()
    for note in (raw.with_suffix(".md"), *shared):
        if note.is_file():
            found = LICENSED.search(note.read_text(encoding="utf-8"))
            return note, found.group(1).strip() if found else None
    return None, None


def _size_category(n: int) -> str:
    return "n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"


def card(stats: dict[str, Any], data_params) -> str:
    """The card's Markdown for a prepared dataset's stats (stats.json) and data params."""
    splits = stats["split_sizes"]
    sources = []
    for f in data_params.raw_files:
        note, licence = source_note(f)
        sources.append({"paper": Path(f).stem, "file": paths.display(paths.resolve_project_path(f)),
                        "note": paths.display(note) if note else None, "licence": licence})
    licences = {HF_LICENSES.get((s["licence"] or "").lower(), "other") for s in sources}
    front = {"pretty_name": f"POLO Easy: {data_params.processed_name}", "language": ["en", "ko"],
             "license": licences.pop() if len(licences) == 1 else "other",
             "task_categories": ["text-generation"], "size_categories": [_size_category(stats["paragraphs"])],
             "tags": ["easy-korean", "paper-explanation", "polo-easy"],
             "dataset_info": {"splits": [{"name": s, "num_examples": n} for s, n in splits.items()]}}
    found = stats.get("review") or {}
    review = found.get("status") or {"hand-written": stats["records"]}
    checks = stats.get("checks") or {}
    flags = checks.get("flags") or {}
    lengths = stats.get("token_lengths") or {}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# POLO Easy: {data_params.processed_name}", "",
             "English paragraphs of research papers paired with easy Korean explanations, as chats through the "
             f"model's template ({stats.get('tokenizer')}); format `{stats['format']}`. Made by `polo run PARAMS "
             f"--stages prepare` (or notebooks/prepare_data.ipynb); inputs hash `{stats.get('inputs_hash')}`.", "",
             "## Sources", "", "| paper | raw file | note | licence |", "|---|---|---|---|"]
    for s in sources:
        note = f"`{s['note']}`" if s["note"] else "-"
        lines.append(f"| {s['paper']} | `{s['file']}` | {note} | {s['licence'] or 'not stated'} |")
    lines += ["", "## Counts", "", f"{stats['records']} records in {stats['paragraphs']} paragraphs; split seed "
              f"{stats.get('split_seed')}.", "", "| paper | " + " | ".join(splits) + " | all |",
              "|---|" + "---|" * (len(splits) + 1)]
    for paper, per_split in (stats.get("papers") or {}).items():
        lines.append(f"| {paper} | " + " | ".join(str(per_split.get(s, 0)) for s in splits)
                     + f" | {sum(per_split.values())} |")
    lines += ["| all | " + " | ".join(str(n) for n in splits.values()) + f" | {sum(splits.values())} |", "",
              "## Review status", "", "| status | records |", "|---|---|"]
    lines += [f"| {status} | {n} |" for status, n in review.items()]
    lines += ["", "Only hand-written, accepted and edited records train; drafts only with `checks.include_drafts`, "
              "rejected ones never.", ""]
    if found.get("teachers"):
        lines += [f"Drafted by {', '.join(found['teachers'])}.", ""]
    lines += ["", "## Token lengths", "", f"Per example, system prompt and chat template included; max_seq_length "
              f"{stats.get('max_seq_length')} (over it: `{data_params.over_length}`).", "",
              "| split | examples | min | mean | max |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {v.get('count')} | {v.get('min')} | {v.get('mean')} | {v.get('max')} |"
              for s, v in lengths.items()]
    lines += ["", "![token lengths per split](lengths.png)", "", "## Checks", "",
              f"{checks.get('paragraphs_checked', 0)} examples checked: {len(checks.get('near_duplicates', []))} "
              f"near-duplicate pairs, {len(checks.get('leaks', []))} validation/test paragraphs leaking training "
              f"text, {len(checks.get('flagged', []))} flagged"
              + (f" ({', '.join(f'{k} {v}' for k, v in Counter(flags).most_common())})" if flags else "") + ".", ""]
    if checks.get("flagged"):
        lines += ["| flagged | flags | Hangul share | length / source | glossary terms kept |", "|---|---|---|---|---|"]
        lines += [f"| {f['id']} | {', '.join(f['flags'])} | {f['hangul_share']} | {f['length_ratio']} | "
                  f"{f.get('term_coverage', '-')} |" for f in checks["flagged"]]
        lines.append("")
    return "\n".join(lines)
