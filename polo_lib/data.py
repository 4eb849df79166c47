"""The YOLO v1 dataset: validate the raw file, clean, group into paragraphs, split, make chats.

Raw records are sentences: {id: "major.minor.n", section_major, section_minor, original,
simplified}. A paragraph is every sentence of one (section_major, section_minor), in id
order; splits are by paragraph so no paragraph leaks between train and test.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import paths, prompts
from .atomic import atomic_replace_dir, atomic_write_json
from .errors import DataError, bullet_list

log = logging.getLogger(__name__)

FIELDS: dict[str, type] = {
    "id": str, "section_major": int, "section_minor": int, "original": str, "simplified": str,
}
ID_PATTERN = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Record:
    id: str
    section_major: int
    section_minor: int
    original: str
    simplified: str

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.id.split("."))  # type: ignore[return-value]


@dataclass(frozen=True)
class Paragraph:
    id: str                      # "major.minor"
    section_major: int
    section_minor: int
    record_ids: tuple[str, ...]
    original: str
    simplified: str


# ---------------------------------------------------------------- validation

def _record_problems(i: int, item: Any) -> list[str]:
    label = f"record {i}"
    if not isinstance(item, dict):
        return [f"{label}: expected an object with fields {', '.join(FIELDS)}, got {type(item).__name__}"]
    if isinstance(item.get("id"), str):
        label = f"record {i} (id {item['id']})"
    problems = []
    for field in FIELDS:
        if field not in item:
            problems.append(f"{label}: missing field '{field}'")
    for field in item:
        if field not in FIELDS:
            problems.append(f"{label}: unexpected field '{field}' (allowed: {', '.join(FIELDS)})")
    for field, kind in FIELDS.items():
        if field not in item:
            continue
        value = item[field]
        # bool is an int in Python; a section number of `true` is still wrong.
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{label}: '{field}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
        elif kind is str and not value.strip():
            problems.append(f"{label}: '{field}' is empty")
        elif kind is int and value < 1:
            problems.append(f"{label}: '{field}' must be >= 1, got {value}")
    rid = item.get("id")
    if isinstance(rid, str) and rid.strip():
        m = ID_PATTERN.match(rid)
        if not m:
            problems.append(f"{label}: id must look like 'major.minor.n' (e.g. '2.1.3'), got {rid!r}")
        else:
            for name, part in (("section_major", m.group(1)), ("section_minor", m.group(2))):
                value = item.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value != int(part):
                    problems.append(f"{label}: {name} is {value} but the id says {int(part)}")
    return problems


def validate_records(items: Any, source: str = "data") -> list[Record]:
    """Every problem of every record at once, as one DataError; else the records."""
    if not isinstance(items, list):
        raise DataError(f"{source}: expected a JSON list of records, got a JSON "
                        f"{type(items).__name__}. Wrap the records in [ ... ].")
    if not items:
        raise DataError(f"{source}: the list is empty; it needs records "
                        f"{{{', '.join(FIELDS)}}}.")
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        problems += _record_problems(i, item)
        rid = item.get("id") if isinstance(item, dict) else None
        if isinstance(rid, str):
            if rid in first_seen:
                problems.append(f"record {i} (id {rid}): duplicate id (also record {first_seen[rid]})")
            else:
                first_seen[rid] = i
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s) in the records; fix them and rerun:\n"
                        f"{bullet_list(problems)}")
    return [Record(**{k: item[k] for k in FIELDS}) for item in items]


def load_raw(path: str | Path) -> list[Record]:
    """Read and validate the raw JSON file; DataError names the file and every bad record."""
    path = paths.resolve_project_path(path)
    shown = _display(path)
    if not path.is_file():
        raise DataError(f"{shown}: no such file. Set data.raw_file to the dataset's path "
                        f"(relative to the repo root or absolute).")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{shown}: not UTF-8 at byte {e.start} (line {line}): "
                        f"{raw[e.start:e.start + 4]!r}. Re-save the file as UTF-8.") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{shown}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    return validate_records(items, source=shown)


# ------------------------------------------------------------------ cleaning

def remove_fillers(text: str, phrases: Iterable[str]) -> tuple[str, list[str]]:
    """Drop filler phrases ("In simple terms, ", "쉽게 말해서, ") wherever they occur,
    case-insensitively, then normalize whitespace. Returns (clean text, phrases removed)."""
    removed: list[str] = []
    for phrase in phrases:
        core = phrase.strip()
        if not core:
            continue
        pattern = re.compile(re.escape(core) + r"\s*", re.IGNORECASE)
        text, n = pattern.subn("", text)
        removed += [core] * n
    return " ".join(text.split()), removed


def clean_records(records: Sequence[Record], phrases: Iterable[str]) -> tuple[list[Record], pd.DataFrame]:
    """Clean every `simplified` (fillers, whitespace) and `original` (whitespace).

    The DataFrame lists what changed: id, phrase removed, text before and after.
    """
    phrases = list(phrases)
    cleaned, changes = [], []
    for r in records:
        simplified, removed = remove_fillers(r.simplified, phrases)
        original = " ".join(r.original.split())
        if not simplified:
            raise DataError(f"record id {r.id}: 'simplified' is empty after removing filler "
                            f"phrases {removed}; write the explanation itself, not only the filler.")
        for phrase in removed:
            changes.append({"id": r.id, "removed": phrase, "before": r.simplified, "after": simplified})
        cleaned.append(Record(r.id, r.section_major, r.section_minor, original, simplified))
    return cleaned, pd.DataFrame(changes, columns=["id", "removed", "before", "after"])


# ------------------------------------------------------- paragraphs and splits

def group_paragraphs(records: Sequence[Record]) -> list[Paragraph]:
    """One paragraph per (section_major, section_minor), sentences in id order."""
    groups: dict[tuple[int, int], list[Record]] = {}
    for r in sorted(records, key=lambda r: r.sort_key):
        groups.setdefault((r.section_major, r.section_minor), []).append(r)
    return [
        Paragraph(
            id=f"{major}.{minor}", section_major=major, section_minor=minor,
            record_ids=tuple(r.id for r in rs),
            original=" ".join(r.original for r in rs),
            simplified=" ".join(r.simplified for r in rs),
        )
        for (major, minor), rs in sorted(groups.items())
    ]


def split_paragraphs(paragraphs: Sequence[Paragraph], validation_fraction: float,
                     test_fraction: float, seed: int) -> dict[str, list[Paragraph]]:
    """Seeded, deterministic split by paragraph; each split keeps document order."""
    n = len(paragraphs)
    n_val = max(1, round(n * validation_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} paragraphs cannot be split into train/validation/test with "
                        f"validation_fraction={validation_fraction} and test_fraction={test_fraction}: "
                        "add data or lower the fractions.")
    order = sorted(range(n), key=lambda i: _key(paragraphs[i].id))
    random.Random(seed).shuffle(order)
    chosen = {"validation": set(order[:n_val]), "test": set(order[n_val:n_val + n_test])}
    chosen["train"] = set(order[n_val + n_test:])
    return {s: [paragraphs[i] for i in sorted(chosen[s], key=lambda i: _key(paragraphs[i].id))]
            for s in SPLITS}


def _key(pid: str) -> tuple[int, ...]:
    return tuple(int(x) for x in pid.split("."))


def to_examples(paragraphs: Sequence[Paragraph]) -> list[dict[str, Any]]:
    """Chat examples: system (the Easy prompt), user = original, assistant = simplified."""
    return [{"id": p.id, "original": p.original, "simplified": p.simplified,
             "messages": prompts.build_messages(p.original, p.simplified)} for p in paragraphs]


def paragraph_table(splits: dict[str, list[Paragraph]]) -> pd.DataFrame:
    rows = [{"id": p.id, "split": s, "sentences": len(p.record_ids),
             "original_chars": len(p.original), "simplified_chars": len(p.simplified),
             "original": p.original, "simplified": p.simplified}
            for s, ps in splits.items() for p in ps]
    return pd.DataFrame(rows).sort_values("id", key=lambda c: c.map(_key)).reset_index(drop=True)


# -------------------------------------------------------------- token lengths

def token_length(messages: list[dict[str, str]], tokenizer) -> int:
    """Tokens of the full chat as the model sees it: its own chat template, then its tokenizer."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_lengths(examples: Sequence[dict[str, Any]], tokenizer) -> list[int]:
    return [token_length(e["messages"], tokenizer) for e in examples]


def apply_length_policy(split: str, examples: list[dict[str, Any]], lengths: list[int],
                        max_seq_length: int, policy: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Examples over max_seq_length: 'fail' names them, 'drop' removes them with a warning.

    Never truncate: TRL would cut silently and train on half an answer.
    """
    over = [(e["id"], n) for e, n in zip(examples, lengths) if n > max_seq_length]
    if over and policy == "fail":
        listed = ", ".join(f"{pid} ({n} tokens)" for pid, n in over)
        raise DataError(
            f"{len(over)} {split} example(s) exceed max_seq_length={max_seq_length}: {listed}. "
            f"Raise model.max_seq_length to at least {max(n for _, n in over)}, or set "
            "data.over_length: drop to leave them out.")
    if over:
        log.warning("dropping %d %s example(s) over max_seq_length=%d: %s", len(over), split,
                    max_seq_length, ", ".join(pid for pid, _ in over))
    keep = [e for e, n in zip(examples, lengths) if n <= max_seq_length]
    return keep, [pid for pid, _ in over]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    return {"count": len(s), "min": s[0], "mean": round(statistics.fmean(s), 1),
            "median": statistics.median(s), "p95": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))],
            "max": s[-1], "total": sum(s)}


# ------------------------------------------------------------ the whole recipe

@dataclass
class Prepared:
    """Everything prepare_data computed, for the notebook to show and `save` to write."""
    examples: dict[str, list[dict[str, Any]]]
    lengths: dict[str, list[int]]
    dropped: dict[str, list[str]]
    cleaning: pd.DataFrame
    paragraphs: pd.DataFrame
    stats: dict[str, Any]


def _split(data_params):
    """(records, cleaning table, paragraphs, splits): everything of prepare that needs no tokenizer."""
    records = load_raw(data_params.raw_file)
    cleaned, cleaning = clean_records(records, data_params.filler_phrases)
    paragraphs = group_paragraphs(cleaned)
    splits = split_paragraphs(paragraphs, data_params.validation_fraction,
                              data_params.test_fraction, data_params.split_seed)
    return records, cleaning, paragraphs, splits


def split_sizes(data_params) -> dict[str, int]:
    """Paragraphs per split before any length check, without a tokenizer (for planning a run offline)."""
    return {name: len(ps) for name, ps in _split(data_params)[3].items()}


def inputs_hash(data_params, tokenizer, max_seq_length: int) -> str:
    """12 hex digits of everything the processed data is made from: the raw file's bytes, the data
    params, max_seq_length, and the tokenizer's identity (class, vocabulary, special tokens and
    chat template). Equal hashes: preparing again would write the same splits."""
    raw = paths.resolve_project_path(data_params.raw_file)
    h = hashlib.sha256(raw.read_bytes() if raw.is_file() else b"")
    identity = {"data": data_params.model_dump(mode="json"), "max_seq_length": max_seq_length,
                "tokenizer": type(tokenizer).__name__, "chat_template": getattr(tokenizer, "chat_template", None),
                "special": {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}}
    h.update(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    return h.hexdigest()[:12]


def prepared_hash(data_params) -> str | None:
    """The inputs hash the processed data on disk was made from; None when there is none (or it
    predates the hash)."""
    where = processed_path(data_params)
    try:
        return json.loads((where / "stats.json").read_text(encoding="utf-8")).get("inputs_hash") \
            if (where / "dataset").is_dir() else None
    except (OSError, ValueError):
        return None


def current_hash(data_params, tokenizer, max_seq_length: int) -> str | None:
    """The inputs hash when the processed data on disk was made from exactly these inputs, else None."""
    key = inputs_hash(data_params, tokenizer, max_seq_length)
    return key if prepared_hash(data_params) == key else None


def prepare(data_params, tokenizer, max_seq_length: int) -> Prepared:
    """Load, validate, clean, group, split, build chats and count tokens. Writes nothing."""
    records, cleaning, paragraphs, splits = _split(data_params)
    examples, lengths, dropped = {}, {}, {}
    for split, ps in splits.items():
        ex = to_examples(ps)
        n = token_lengths(ex, tokenizer)
        kept, dropped[split] = apply_length_policy(split, ex, n, max_seq_length, data_params.over_length)
        examples[split] = kept
        lengths[split] = [k for k in n if k <= max_seq_length]
    stats = {
        "raw_file": _display(paths.resolve_project_path(data_params.raw_file)),
        "records": len(records), "paragraphs": len(paragraphs),
        "fillers_removed": int(len(cleaning)),
        "fillers_by_phrase": cleaning["removed"].value_counts().to_dict() if len(cleaning) else {},
        "split_sizes": {s: len(e) for s, e in examples.items()},
        "split_ids": {s: [e["id"] for e in ex] for s, ex in examples.items()},
        "dropped_over_length": dropped,
        "max_seq_length": max_seq_length,
        "tokenizer": Path(str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))).name,
        "token_lengths": {s: length_stats(n) for s, n in lengths.items()},
        "split_seed": data_params.split_seed,
        "inputs_hash": inputs_hash(data_params, tokenizer, max_seq_length),
    }
    return Prepared(examples, lengths, dropped, cleaning, paragraph_table(splits), stats)


def split_table(prepared: Prepared) -> pd.DataFrame:
    """Per split: examples, dropped, and token length statistics."""
    rows = [{"split": s, "examples": len(prepared.examples[s]), "dropped": len(prepared.dropped[s]),
             **{f"tokens_{k}": v for k, v in prepared.stats["token_lengths"][s].items() if k != "count"}}
            for s in SPLITS]
    return pd.DataFrame(rows).set_index("split")


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

    return atomic_replace_dir(processed_path(data_params), build)


def load_processed(data_params):
    """The DatasetDict written by prepare_data; a clear error if it was never prepared."""
    from datasets import load_from_disk

    where = processed_path(data_params)
    if not (where / "dataset").is_dir():
        raise DataError(f"no processed dataset at {where}: run notebooks/prepare_data.ipynb with the "
                        "same params first (or `polo run PARAMS --stages prepare`).")
    return load_from_disk(str(where / "dataset"))


def load_or_prepare(cfg):
    """The processed splits for these params; prepared first, announced, when they are missing or
    were made from other inputs (`inputs_hash`: an edited raw file must not train on stale splits).

    A fresh clone or a Colab runtime has no data/processed/: train.ipynb opened alone must still
    run to its end. The same calls as prepare_data.ipynb (the model's own tokenizer and template).
    """
    from .model import load_tokenizer

    where = processed_path(cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    if not current_hash(cfg.data, tokenizer, cfg.model.max_seq_length):
        why = "was made from other inputs (raw file, data params or tokenizer)" if (where / "dataset").is_dir() \
            else "is missing"
        log.warning("processed data for '%s' at %s %s: preparing it now, as prepare_data.ipynb does",
                    cfg.data.processed_name, _display(where), why)
        save(prepare(cfg.data, tokenizer, cfg.model.max_seq_length), cfg.data)
    return load_processed(cfg.data)


def load_stats(data_params) -> dict[str, Any]:
    return json.loads((processed_path(data_params) / "stats.json").read_text(encoding="utf-8"))


def describe(dataset) -> pd.DataFrame:
    """Split sizes and character counts of a processed DatasetDict."""
    rows = [{"split": s, "examples": len(d),
             "original_chars": sum(len(x) for x in d["original"]),
             "simplified_chars": sum(len(x) for x in d["simplified"])} for s, d in dataset.items()]
    return pd.DataFrame(rows).set_index("split")


def _display(path: Path) -> str:
    try:
        return str(Path(path).relative_to(paths.PROJ_ROOT))
    except ValueError:
        return str(path)

