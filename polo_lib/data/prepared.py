"""Every step together: data params and a tokenizer -> Prepared splits; prepared again when stale."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import paths
from ..errors import DataError
from .clean import clean_examples, clean_records
from .formats import Paragraph, load_chats, load_raw, review_counts, reviewed
from .lengths import apply_length_policy, length_stats, token_lengths
from .split import SPLITS, group_paragraphs, paragraph_table, split_paragraphs, to_examples
from .store import current_hash, inputs_hash, load_processed, processed_path, save


@dataclass
class Prepared:
    """Everything prepare_data computed, for the notebook to show and `save` to write."""
    examples: dict[str, list[dict[str, Any]]]
    lengths: dict[str, list[int]]
    dropped: dict[str, list[str]]
    cleaning: pd.DataFrame
    paragraphs: pd.DataFrame
    stats: dict[str, Any]


def read_examples(data_params, include_drafts: bool = False) -> tuple[int, pd.DataFrame, list[Paragraph],
                                                                      dict[str, Any]]:
    """(records read, cleaning table, examples, review: {status: records per review status, teachers: who drafted
    them}) from every raw file, in data.format; the problems of every file at once. Fillers are removed from every
    answer (the cleaning table lists them). Paper format: a teacher's drafts nobody reviewed are refused (unless
    `include_drafts`), rejected records left out."""
    files = data_params.raw_files
    problems: list[str] = []
    count, cleanings, examples = 0, [], []
    statuses, teachers = Counter(), set()
    for f in files:
        prefix = f"{Path(f).stem}/" if len(files) > 1 else ""
        try:
            if data_params.format == "paper":
                records = load_raw(f)
                statuses.update(review_counts(records))
                teachers |= {f"{r.source} (prompt {r.prompt_hash})" for r in records if r.source}
                records = reviewed(records, paths.display(paths.resolve_project_path(f)), include_drafts)
                cleaned, cleaning = clean_records(records, data_params.filler_phrases)
                examples += group_paragraphs(cleaned, prefix)
            else:
                chats = load_chats(f, data_params.format, prefix)
                records, (cleaned_chats, cleaning) = chats, clean_examples(chats, data_params.filler_phrases)
                examples += cleaned_chats
        except DataError as e:
            problems.append(str(e))
            continue
        count += len(records)
        cleanings.append(cleaning)
    if problems:
        raise DataError("\n".join(problems))
    return count, pd.concat(cleanings, ignore_index=True), examples, {"status": dict(statuses),
                                                                      "teachers": sorted(teachers)}


def _read_and_split(data_params, include_drafts: bool = False):
    """(records read, cleaning table, paragraphs, splits, review counts): everything of prepare that needs no
    tokenizer."""
    count, cleaning, paragraphs, review = read_examples(data_params, include_drafts)
    splits = split_paragraphs(paragraphs, data_params.validation_fraction,
                              data_params.test_fraction, data_params.split_seed)
    return count, cleaning, paragraphs, splits, review


def split_sizes(data_params, include_drafts: bool = False) -> dict[str, int]:
    """Paragraphs per split before any length check, without a tokenizer (for planning a run offline)."""
    return {name: len(ps) for name, ps in _read_and_split(data_params, include_drafts)[3].items()}


def prepare(data_params, tokenizer, max_seq_length: int, checks=None) -> Prepared:
    """Load, validate, clean, group, split, check (near-duplicates, leakage, quality flags: `checks`, the params'
    checks section, None for its defaults), build chats and count tokens. Writes nothing; DataError naming
    every problem the checks found."""
    from ..params import ChecksParams
    from . import checks as checks_lib

    settings = checks or ChecksParams()  # the hash below takes the section as the params give it (None: none)
    count, cleaning, paragraphs, splits, review = _read_and_split(data_params, settings.include_drafts)
    checked = checks_lib.run(splits, settings, data_params.format == "paper")
    checks_lib.enforce(checked, ", ".join(data_params.raw_files))
    examples, lengths, dropped = {}, {}, {}
    for split, ps in splits.items():
        ex = to_examples(ps)
        n = token_lengths(ex, tokenizer)
        kept, dropped[split] = apply_length_policy(split, ex, n, max_seq_length, data_params.over_length)
        examples[split] = kept
        lengths[split] = [k for k in n if k <= max_seq_length]
    stats = {
        "raw_file": ", ".join(paths.display(paths.resolve_project_path(f)) for f in data_params.raw_files),
        "format": data_params.format,
        "records": count, "paragraphs": len(paragraphs), "review": review,
        "papers": {name: {s: sum(e["paper"] == name for e in ex) for s, ex in examples.items()}
                   for name in dict.fromkeys(p.paper for p in paragraphs)},
        "fillers_removed": int(len(cleaning)),
        "fillers_by_phrase": cleaning["removed"].value_counts().to_dict() if len(cleaning) else {},
        "split_sizes": {s: len(e) for s, e in examples.items()},
        "split_ids": {s: [e["id"] for e in ex] for s, ex in examples.items()},
        "dropped_over_length": dropped,
        "max_seq_length": max_seq_length,
        "tokenizer": Path(str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))).name,
        "token_lengths": {s: length_stats(n) for s, n in lengths.items()},
        "split_seed": data_params.split_seed,
        "checks": checked.stats(),
        "inputs_hash": inputs_hash(data_params, tokenizer, max_seq_length, checks),
    }
    return Prepared(examples, lengths, dropped, cleaning, paragraph_table(splits), stats)


def split_table(prepared: Prepared) -> pd.DataFrame:
    """Per split: examples, dropped, and token length statistics."""
    rows = [{"split": s, "examples": len(prepared.examples[s]), "dropped": len(prepared.dropped[s]),
             **{f"tokens_{k}": v for k, v in prepared.stats["token_lengths"][s].items() if k != "count"}}
            for s in SPLITS]
    return pd.DataFrame(rows).set_index("split")


def load_or_prepare(cfg):
    """The processed splits for these params; prepared first, announced, when they are missing or
    were made from other inputs (`inputs_hash`: an edited raw file must not train on stale splits).

    A fresh clone or a Colab runtime has no data/processed/: train.ipynb opened alone must still
    run to its end. The same calls as prepare_data.ipynb (the model's own tokenizer and template).
    """
    from ..model import load_tokenizer

    where = processed_path(cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    if not current_hash(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks):
        why = "was made from other inputs (raw file, data params or tokenizer)" if (where / "dataset").is_dir() \
            else "is missing"
        # An announcement on stdout, not a logged warning: preparing here is what the cell is for on a
        # fresh clone, and JupyterLab shows a warning (stderr) in red, as if something were wrong.
        print(f"processed data for '{cfg.data.processed_name}' at {paths.display(where)} {why}: preparing it now, "
              "as prepare_data.ipynb does", flush=True)
        save(prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks), cfg.data)
    return load_processed(cfg.data)
