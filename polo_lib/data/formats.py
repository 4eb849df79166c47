"""The three raw formats (`data.format`) read and validated into records and examples, every problem at once.

- paper (the YOLO v1 dataset's): records are sentences {id: "major.minor.n", section_major,
  section_minor, original, simplified}; a paragraph is every sentence of one (section_major,
  section_minor), in id order (split.group_paragraphs). One JSON file per paper: several files
  train on several papers, each file's name (its stem) kept as the examples' `paper`.
- messages: chat JSONL, one {"messages": [{"role": "system", ...}?, {"role": "user", ...},
  {"role": "assistant", ...}]} per line (OpenAI style); the system prompt is the record's own.
- alpaca: a JSON list or JSONL of {instruction, input (optional), output}; the user turn is the
  instruction and the input, no system prompt.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths, prompts
from ..errors import DataError, bullet_list

FIELDS: dict[str, type] = {
    "id": str, "section_major": int, "section_minor": int, "original": str, "simplified": str,
}
# Optional, on records a teacher drafted (polo draft): their review status, who drafted them, the drafting
# prompt's hash and the tokens the request used. Hand-written records carry none.
REVIEW_FIELDS: dict[str, type] = {"status": str, "source": str, "prompt_hash": str, "tokens": int}
STATUSES = ("draft", "accepted", "edited", "rejected")  # only accepted and edited (and hand-written) ones train
ID_PATTERN = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Record:
    id: str
    section_major: int
    section_minor: int
    original: str
    simplified: str
    paper: str = ""  # the file's stem
    status: str | None = None  # REVIEW_FIELDS: None on hand-written records
    source: str | None = None
    prompt_hash: str | None = None
    tokens: int | None = None

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.id.split("."))  # type: ignore[return-value]


@dataclass(frozen=True)
class Paragraph:
    """One training example, whatever the format: a paper's paragraph, or one chat of a messages or
    alpaca file. The field names are the paper format's, and the processed dataset's columns keep
    them for every format (evaluation reads `original` and `simplified` alike):

      field          paper format                            messages / alpaca
      id             "major.minor"                           the record's number ("1", "2", ...)
      section_*      the section numbers                     0
      record_ids     the sentences' ids, in order            (the record's number,)
      original       the English paragraph (the user turn)   the question: the user turn (alpaca:
                                                             instruction, a blank line, input)
      simplified     the easy Korean explanation             the answer: the assistant turn
      system         None: the Easy prompt                   the chat's own system prompt, "" for none
    """
    id: str                      # with several files, after "<paper>/"
    section_major: int
    section_minor: int
    record_ids: tuple[str, ...]
    original: str                # the user turn: the English paragraph, or a chat's question
    simplified: str              # the assistant turn: the explanation, or a chat's answer
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
        if field not in FIELDS and field not in REVIEW_FIELDS:
            problems.append(f"{label}: unexpected field '{field}' (allowed: {', '.join(FIELDS)}; a teacher's "
                            f"drafts also {', '.join(REVIEW_FIELDS)})")
    for field, kind in REVIEW_FIELDS.items():
        value = item.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"{label}: '{field}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(item.get("status"), str) and item["status"] not in STATUSES:
        problems.append(f"{label}: status {item['status']!r} is none of {', '.join(STATUSES)}")
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
    return [Record(**{k: item[k] for k in FIELDS}, **{k: item[k] for k in REVIEW_FIELDS if item.get(k) is not None})
            for item in items]


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
    """Read and validate a paper-format file, a JSON list or JSONL (one record per line: what polo draft
    appends); DataError names the file and every bad record. Each record's `paper` is the file's stem."""
    path, shown, text = _read(path)
    if path.suffix == ".jsonl":
        lines, problems = _items(text, shown, jsonl=True)
        if problems:
            raise DataError(f"{shown}: {len(problems)} problem(s) in the records; fix them and rerun:\n"
                            f"{bullet_list(problems)}")
        items = [item for _, item in lines]
    else:
        items = _json(text, shown)
    return [dataclasses.replace(r, paper=path.stem) for r in validate_records(items, source=shown)]


def review_counts(records: list[Record]) -> Counter:
    """Records per review status; hand-written ones (no status) as 'hand-written'."""
    return Counter(r.status or "hand-written" for r in records)


def reviewed(records: list[Record], shown: str, include_drafts: bool) -> list[Record]:
    """The records that train: hand-written, accepted and edited ones (and drafts with `include_drafts`);
    rejected ones never. DataError when unreviewed drafts remain, with their count and the ways on."""
    drafts = [r.id for r in records if r.status == "draft"]
    if drafts and not include_drafts:
        raise DataError(f"{shown}: {len(drafts)} of {len(records)} records are a teacher's drafts nobody reviewed "
                        f"(status: draft; first: {', '.join(drafts[:5])}). Review them: set each one's status to "
                        "accepted, edited (with your Korean) or rejected; or train on them as drafted with "
                        "--set checks.include_drafts=true (recorded in the run).")
    return [r for r in records if r.status != "rejected"]


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


# ------------------------------------------------------------ preference pairs (the align stage's DPO)

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def _turns_problems(where: str, value: Any, roles: tuple[str, ...]) -> list[str]:
    """A preference field: text, or a non-empty list of {role, content} messages with these roles."""
    if isinstance(value, str):
        problem = _text_problem(where, value)
        return [problem] if problem else []
    if not isinstance(value, list) or not value:
        return [f"{where} must be text or a non-empty list of {{role, content}} messages, got {type(value).__name__}"]
    problems = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in roles:
            problems.append(f"{where}[{j}]: expected {{role, content}} with role {' or '.join(roles)}, got {m!r:.80}")
            continue
        problem = _text_problem(f"{where}[{j}].content", m.get("content"))
        if problem:
            problems.append(problem)
    return problems


def _preference_problems(label: str, item: Any) -> list[str]:
    if not isinstance(item, dict):
        return [f"{label}: expected an object with fields prompt, chosen, rejected, got {type(item).__name__}"]
    problems = [f"{label}: missing field '{k}'" for k in PREFERENCE_FIELDS if k not in item]
    if "prompt" in item:
        problems += _turns_problems(f"{label}: prompt", item["prompt"], ("system", "user"))
    for k in ("chosen", "rejected"):
        if k in item:
            problems += _turns_problems(f"{label}: {k}", item[k], ("assistant",))
    if not problems and _answer_text(item["chosen"]).strip() == _answer_text(item["rejected"]).strip():
        problems.append(f"{label}: chosen and rejected are the same answer: a pair must differ")
    return problems


def _answer_text(value: Any) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def load_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs in TRL's format, JSONL (or a JSON list): {prompt, chosen, rejected}, the prompt as text
    or [system,] user messages, each answer as text or one assistant message; other fields (where a pair came
    from) are kept. Every bad record named at once in one DataError, nothing returned then. Text prompts become
    the Easy prompt's messages, text answers assistant messages, so every pair is conversational."""
    path, shown, text = _read(path)
    jsonl = path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("[")
    items, problems = _items(text, shown, jsonl)
    for label, item in items:
        problems += _preference_problems(label, item)
    if problems:
        raise DataError(f"{shown}: {len(problems)} problem(s) in the preference pairs:\n{bullet_list(problems)}")
    if not items:
        raise DataError(f"{shown}: no preference pairs in the file (one {{prompt, chosen, rejected}} per line).")
    out = []
    for _, item in items:
        pair = dict(item)
        if isinstance(pair["prompt"], str):
            pair["prompt"] = prompts.build_messages(pair["prompt"])
        for k in ("chosen", "rejected"):
            if isinstance(pair[k], str):
                pair[k] = [{"role": "assistant", "content": pair[k]}]
        out.append(pair)
    return out
