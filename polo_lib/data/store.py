"""The processed data on disk: its folder, the inputs hash it was made from, saving and loading it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import paths
from ..atomic import atomic_replace_dir, atomic_write_json
from ..errors import DataError

if TYPE_CHECKING:
    from .prepared import Prepared

# The processed dataset's layout (columns id, paper, original, simplified, messages), part of the
# inputs hash: a new number when the columns change makes data on disk in another layout stale.
LAYOUT = 2


def inputs_hash(data_params, tokenizer, max_seq_length: int, checks=None) -> str:
    """12 hex digits of everything the processed data is made from: the raw files' bytes, the data
    params, max_seq_length, the tokenizer's identity (class, vocabulary, special tokens and chat
    template) and LAYOUT. Equal hashes: preparing again would write the same splits."""
    h = hashlib.sha256()
    for f in data_params.raw_files:
        raw = paths.resolve_project_path(f)
        h.update(hashlib.sha256(raw.read_bytes() if raw.is_file() else b"").digest())
    identity = {"data": data_params.model_dump(mode="json"), "max_seq_length": max_seq_length, "layout": LAYOUT,
                "tokenizer": type(tokenizer).__name__, "chat_template": getattr(tokenizer, "chat_template", None),
                "special": {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}}
    if checks is not None:  # a checks section set in the params: other thresholds check the data again
        identity["checks"] = checks.model_dump(mode="json")
    h.update(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    return h.hexdigest()[:12]


def prepared_hash(data_params) -> str | None:
    """The inputs hash the processed data on disk was made from; None when there is no processed
    data, or its stats.json records no hash."""
    where = processed_path(data_params)
    try:
        return json.loads((where / "stats.json").read_text(encoding="utf-8")).get("inputs_hash") \
            if (where / "dataset").is_dir() else None
    except (OSError, ValueError):
        return None


def current_hash(data_params, tokenizer, max_seq_length: int, checks=None) -> str | None:
    """The inputs hash when the processed data on disk was made from exactly these inputs, else None."""
    key = inputs_hash(data_params, tokenizer, max_seq_length, checks)
    return key if prepared_hash(data_params) == key else None


def processed_path(data_params) -> Path:
    return paths.processed_dir() / data_params.processed_name


def save(prepared: Prepared, data_params) -> Path:
    """Write the DatasetDict and stats.json atomically: a failure keeps the previous version."""
    import datasets

    def build(tmp: Path) -> None:
        dd = datasets.DatasetDict({s: datasets.Dataset.from_list(ex) for s, ex in prepared.examples.items()})
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # three bars for 60 small examples: noise in polo run's terminal
        try:
            dd.save_to_disk(str(tmp / "dataset"))
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        atomic_write_json(tmp / "stats.json", prepared.stats)
        # the dataset card and its picture, beside the data they describe (polo_lib/data/card.py)
        from .. import plots
        from .card import card

        plots.save(plots.token_length_histogram(prepared.lengths, prepared.stats["max_seq_length"]),
                   tmp / "lengths.png")
        (tmp / "README.md").write_text(card(prepared.stats, data_params), encoding="utf-8")

    return atomic_replace_dir(processed_path(data_params), build)


def load_processed(data_params):
    """The DatasetDict written by prepare_data; a clear error if it was never prepared."""
    from datasets import load_from_disk

    where = processed_path(data_params)
    if not (where / "dataset").is_dir():
        raise DataError(f"no processed dataset at {where}: run notebooks/prepare_data.ipynb with the "
                        "same params first (or `polo run PARAMS --stages prepare`).")
    return load_from_disk(str(where / "dataset"))


def load_stats(data_params) -> dict[str, Any]:
    return json.loads((processed_path(data_params) / "stats.json").read_text(encoding="utf-8"))


def describe(dataset) -> pd.DataFrame:
    """Split sizes and character counts of a processed DatasetDict."""
    rows = [{"split": s, "examples": len(d),
             "original_chars": sum(len(x) for x in d["original"]),
             "simplified_chars": sum(len(x) for x in d["simplified"])} for s, d in dataset.items()]
    return pd.DataFrame(rows).set_index("split")
