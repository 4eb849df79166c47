"""The training data: validate the raw files, clean, group into paragraphs, split, make chats.

Three formats (`data.format`), each validated with every problem reported at once:
- paper (the YOLO v1 dataset's): records are sentences {id: "major.minor.n", section_major,
  section_minor, original, simplified}; a paragraph is every sentence of one (section_major,
  section_minor), in id order. One JSON file per paper: several files train on several papers,
  each file's name (its stem) kept as the examples' `paper`, and each paper split on its own, so
  every split holds every paper and the evaluation can be broken down per paper.
- messages: chat JSONL, one {"messages": [{"role": "system", ...}?, {"role": "user", ...},
  {"role": "assistant", ...}]} per line (OpenAI style); the system prompt is the record's own.
- alpaca: a JSON list or JSONL of {instruction, input (optional), output}; the user turn is the
  instruction and the input, no system prompt.
Each example (a paragraph, or one chat) becomes one chat through the model's own template; splits
are by example, so nothing leaks between train and test.
"""
from __future__ import annotations

import dataclasses
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
# The processed dataset's columns, versioned: data prepared by an older layout is prepared again.
# 2: `paper` beside id, original, simplified, messages.
LAYOUT = 2


@dataclass(frozen=True)
class Record:
    id: str
    section_major: int
    section_minor: int
    original: str
    simplified: str
    paper: str = ""  # the file's stem

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.id.split("."))  # type: ignore[return-value]


@dataclass(frozen=True)
class Paragraph:
    """One training example: a paper's paragraph, or one chat of a messages/alpaca file."""
    id: str                      # "major.minor" (paper) or the record's number; "<paper>/..." with several files
    section_major: int
    section_minor: int
    record_ids: tuple[str, ...]
    original: str                # what the user turn carries: the English paragraph, or the chat's question
    simplified: str              # the answer
    paper: str = ""              # the file it came from (its stem)
    # paper format: None (the Easy prompt, prompts.build_messages); a chat's own system prompt, or
    # "" for none (alpaca, and chats without one)
    system: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        if self.system is None:
            return prompts.build_messages(self.original, self.simplified)
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self.original}, {"role": "assistant", "content": self.simplified}]


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


def _read(path: str | Path) -> tuple[Path, str, str]:
    """(path, how to show it, its text): a clear DataError when it is missing or not UTF-8."""
    path = paths.resolve_project_path(path)
    shown = paths.display(path)
    if not path.is_file():
        raise DataError(f"{shown}: no such file. Set data.raw_file to the dataset's path "
                        f"(relative to the repo root or absolute), or a list of paths.")
    raw = path.read_bytes()
    try:
        return path, shown, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{shown}: not UTF-8 at byte {e.start} (line {line}): "
                        f"{raw[e.start:e.start + 4]!r}. Re-save the file as UTF-8.") from None


def _json(text: str, shown: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{shown}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None


def load_raw(path: str | Path) -> list[Record]:
    """Read and validate a paper-format JSON file; DataError names the file and every bad record.
    Each record's `paper` is the file's stem."""
    path, shown, text = _read(path)
    return [dataclasses.replace(r, paper=path.stem) for r in validate_records(_json(text, shown), source=shown)]


# ------------------------------------------------------------ chat formats

CHAT_ROLES = ("system", "user", "assistant")
ALPACA_FIELDS = {"instruction": True, "input": False, "output": True}  # field: required


def _items(text: str, shown: str, jsonl: bool) -> tuple[list[tuple[str, Any]], list[str]]:
    """(label, item) per record and the problems of reading them: a JSON list, or JSONL (one object
    per line, blank lines skipped; every bad line named at once)."""
    if not jsonl:
        items = _json(text, shown)
        if not isinstance(items, list):
            raise DataError(f"{shown}: expected a JSON list of records (or JSONL, one per line), got a JSON "
                            f"{type(items).__name__}.")
        return [(f"record {i + 1}", item) for i, item in enumerate(items)], []
    out, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not valid JSON at column {e.colno}: {e.msg} (JSONL: one object per line)")
    return out, problems


def _text_problem(where: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{where} must be text, got {type(value).__name__} {str(value)[:60]!r}"
    return None if value.strip() else f"{where} is empty"


def _chat_problems(label: str, item: Any) -> list[str]:
    """What is wrong with one messages record: {"messages": [system?, user, assistant]}."""
    if not isinstance(item, dict):
        return [f'{label}: expected an object {{"messages": [...]}}, got {type(item).__name__}']
    problems = [f"{label}: unexpected field '{k}' (allowed: messages)" for k in item if k != "messages"]
    chat = item.get("messages")
    if chat is None:
        return [*problems, f"{label}: missing field 'messages'"]
    if not isinstance(chat, list) or not chat:
        return [*problems, f"{label}: 'messages' must be a non-empty list of {{role, content}} objects"]
    for j, m in enumerate(chat):
        where = f"{label}: messages[{j}]"
        if not isinstance(m, dict):
            problems.append(f"{where}: expected an object {{role, content}}, got {type(m).__name__}")
            continue
        problems += [f"{where}: unexpected field '{k}' (allowed: role, content)"
                     for k in m if k not in ("role", "content")]
        if m.get("role") not in CHAT_ROLES:
            problems.append(f"{where}: role must be one of {', '.join(CHAT_ROLES)}, got {m.get('role')!r}")
        problem = _text_problem(f"{where}: content", m.get("content"))
        if problem:
            problems.append(problem)
    roles = [m.get("role") if isinstance(m, dict) else None for m in chat]
    if all(r in CHAT_ROLES for r in roles):
        turns = roles[1:] if roles[:1] == ["system"] else roles
        if turns != ["user", "assistant"]:
            problems.append(f"{label}: expected one exchange: [system,] user, assistant; got roles {roles}. "
                            "Multi-turn chats are not supported: write one exchange per line.")
    return problems


def _alpaca_problems(label: str, item: Any) -> list[str]:
    """What is wrong with one alpaca record: {instruction, input (optional), output}."""
    if not isinstance(item, dict):
        return [f"{label}: expected an object with fields {', '.join(ALPACA_FIELDS)}, got {type(item).__name__}"]
    problems = [f"{label}: unexpected field '{k}' (allowed: {', '.join(ALPACA_FIELDS)})"
                for k in item if k not in ALPACA_FIELDS]
    for name, required in ALPACA_FIELDS.items():
        if name not in item:
            if required:
                problems.append(f"{label}: missing field '{name}'")
            continue
        value = item[name]
        if not required and value in ("", None):
            continue
        problem = _text_problem(f"{label}: '{name}'", value)
        if problem:
            problems.append(problem)
    return problems


def load_chats(path: str | Path, fmt: str, prefix: str = "") -> list[Paragraph]:
    """Read and validate a messages or alpaca file: every problem of every record at once, as one
    DataError naming the file; else one example per record, ids "1", "2", ... (its line number in
    JSONL, its position in a JSON list), after `prefix`."""
    path, shown, text = _read(path)
    jsonl = path.suffix.lower() == ".jsonl" or (fmt == "messages" and not text.lstrip().startswith("["))
    items, problems = _items(text, shown, jsonl)
    check = _chat_problems if fmt == "messages" else _alpaca_problems
    for label, item in items:
        problems += check(label, item)
    if not items and not problems:
        problems.append("no records: the file is empty")
    if problems:
        raise DataError(f"{shown} (data.format {fmt}): {len(problems)} problem(s) in the records; fix them and "
                        f"rerun:\n{bullet_list(problems)}")
    out = []
    for label, item in items:
        number = label.split()[-1]
        if fmt == "messages":
            chat = item["messages"]
            system = chat[0]["content"].strip() if chat[0]["role"] == "system" else ""
            user, answer = chat[-2]["content"].strip(), chat[-1]["content"].strip()
        else:
            system, answer = "", item["output"].strip()
            user = item["instruction"].strip() + (f"\n\n{item['input'].strip()}" if item.get("input") else "")
        out.append(Paragraph(f"{prefix}{number}", 0, 0, (number,), user, answer, path.stem, system))
    return out


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


def _clean(items: Sequence, phrases: Iterable[str], normalise_original: bool, empty) -> tuple[list, pd.DataFrame]:
    """Fillers out of every `simplified` (whitespace normalised), and with `normalise_original` the
    whitespace of every `original` too; `empty(item, removed)` words the error for an answer that
    was only filler. The DataFrame lists what changed: id, phrase removed, text before and after."""
    phrases = list(phrases)
    cleaned, changes = [], []
    for item in items:
        answer, removed = remove_fillers(item.simplified, phrases)
        if not answer:
            raise DataError(empty(item, removed))
        changes += [{"id": item.id, "removed": phrase, "before": item.simplified, "after": answer}
                    for phrase in removed]
        fields = {"simplified": answer}
        if normalise_original:
            fields["original"] = " ".join(item.original.split())
        cleaned.append(dataclasses.replace(item, **fields))
    return cleaned, pd.DataFrame(changes, columns=["id", "removed", "before", "after"])


def clean_examples(examples: Sequence[Paragraph], phrases: Iterable[str]) -> tuple[list[Paragraph], pd.DataFrame]:
    """clean_records for chat examples: fillers out of each answer; the question is kept as written
    (an alpaca input's line breaks are part of it)."""
    return _clean(examples, phrases, False, lambda e, removed: (
        f"example {e.id}: the answer is empty after removing filler phrases {removed}; "
        "write the answer itself, not only the filler."))


def clean_records(records: Sequence[Record], phrases: Iterable[str]) -> tuple[list[Record], pd.DataFrame]:
    """Clean every `simplified` (fillers, whitespace) and `original` (whitespace).

    The DataFrame lists what changed: id, phrase removed, text before and after.
    """
    return _clean(records, phrases, True, lambda r, removed: (
        f"record id {r.id}: 'simplified' is empty after removing filler "
        f"phrases {removed}; write the explanation itself, not only the filler."))


# ------------------------------------------------------- paragraphs and splits

def group_paragraphs(records: Sequence[Record], prefix: str = "") -> list[Paragraph]:
    """One paragraph per (section_major, section_minor) of one paper, sentences in id order; its id
    "major.minor" after `prefix` ("<paper>/" when several papers are read)."""
    groups: dict[tuple[int, int], list[Record]] = {}
    for r in sorted(records, key=lambda r: r.sort_key):
        groups.setdefault((r.section_major, r.section_minor), []).append(r)
    return [
        Paragraph(
            id=f"{prefix}{major}.{minor}", section_major=major, section_minor=minor,
            record_ids=tuple(r.id for r in rs),
            original=" ".join(r.original for r in rs),
            simplified=" ".join(r.simplified for r in rs),
            paper=rs[0].paper,
        )
        for (major, minor), rs in sorted(groups.items())
    ]


def split_paragraphs(paragraphs: Sequence[Paragraph], validation_fraction: float,
                     test_fraction: float, seed: int) -> dict[str, list[Paragraph]]:
    """Seeded, deterministic split by paragraph, each paper on its own (so every split holds every
    paper, in the fractions asked); each split keeps document order."""
    papers: dict[str, list[Paragraph]] = {}
    for p in paragraphs:
        papers.setdefault(p.paper, []).append(p)
    if len(papers) > 1:
        parts = {name: _split_one(ps, validation_fraction, test_fraction, seed, f"paper '{name}': ")
                 for name, ps in papers.items()}
        return {s: [p for name in papers for p in parts[name][s]] for s in SPLITS}
    return _split_one(paragraphs, validation_fraction, test_fraction, seed)


def _split_one(paragraphs: Sequence[Paragraph], validation_fraction: float, test_fraction: float, seed: int,
               label: str = "") -> dict[str, list[Paragraph]]:
    n = len(paragraphs)
    n_val = max(1, round(n * validation_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{label}{n} paragraphs cannot be split into train/validation/test with "
                        f"validation_fraction={validation_fraction} and test_fraction={test_fraction}: "
                        "add data or lower the fractions.")
    order = sorted(range(n), key=lambda i: _key(paragraphs[i].id))
    random.Random(seed).shuffle(order)
    chosen = {"validation": set(order[:n_val]), "test": set(order[n_val:n_val + n_test])}
    chosen["train"] = set(order[n_val + n_test:])
    return {s: [paragraphs[i] for i in sorted(chosen[s], key=lambda i: _key(paragraphs[i].id))]
            for s in SPLITS}


def _key(pid: str) -> tuple:
    """Document order of example ids: "2.10" after "2.9"; "<paper>/..." grouped by paper."""
    paper, _, rest = pid.rpartition("/")
    return (paper, *(int(x) if x.isdigit() else x for x in rest.split(".")))


def to_examples(paragraphs: Sequence[Paragraph]) -> list[dict[str, Any]]:
    """Chat examples: (system,) user = original, assistant = simplified; `paper` names the file."""
    return [{"id": p.id, "paper": p.paper, "original": p.original, "simplified": p.simplified,
             "messages": p.messages} for p in paragraphs]


def paragraph_table(splits: dict[str, list[Paragraph]]) -> pd.DataFrame:
    rows = [{"id": p.id, "paper": p.paper, "split": s, "sentences": len(p.record_ids),
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


def read_examples(data_params) -> tuple[int, pd.DataFrame, list[Paragraph]]:
    """(records read, cleaning table, examples) from every raw file, in data.format; the problems of
    every file at once. Fillers are removed from every answer (the cleaning table lists them)."""
    files = data_params.raw_files
    problems: list[str] = []
    count, cleanings, examples = 0, [], []
    for f in files:
        prefix = f"{Path(f).stem}/" if len(files) > 1 else ""
        try:
            if data_params.format == "paper":
                records = load_raw(f)
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
    return count, pd.concat(cleanings, ignore_index=True), examples


def _split(data_params):
    """(records read, cleaning table, paragraphs, splits): everything of prepare that needs no tokenizer."""
    count, cleaning, paragraphs = read_examples(data_params)
    splits = split_paragraphs(paragraphs, data_params.validation_fraction,
                              data_params.test_fraction, data_params.split_seed)
    return count, cleaning, paragraphs, splits


def split_sizes(data_params) -> dict[str, int]:
    """Paragraphs per split before any length check, without a tokenizer (for planning a run offline)."""
    return {name: len(ps) for name, ps in _split(data_params)[3].items()}


def inputs_hash(data_params, tokenizer, max_seq_length: int) -> str:
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
    count, cleaning, paragraphs, splits = _split(data_params)
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
        "records": count, "paragraphs": len(paragraphs),
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
        # An announcement on stdout, not a logged warning: preparing here is what the cell is for on a
        # fresh clone, and JupyterLab shows a warning (stderr) in red, as if something were wrong.
        print(f"processed data for '{cfg.data.processed_name}' at {paths.display(where)} {why}: preparing it now, "
              "as prepare_data.ipynb does", flush=True)
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

