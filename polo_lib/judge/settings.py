"""The judge's settings and rubric (params/judge/), the endpoint's URL and key, and the names the package shares."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import paths
from ..errors import ParamsError

JUDGE_DIR = paths.PARAMS_DIR / "judge"  # settings (default.yaml) and the rubric (rubric.md)
JUDGE_FILE = "judge.jsonl"
RATINGS_FILE = "ratings.jsonl"
TUNED, BASE, TIE = "tuned", "base", "tie"


class Settings(BaseModel):
    """How to ask the judge (params/judge/default.yaml; each value may be replaced on the command line)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    rubric: str = "rubric.md"
    concurrency: int = Field(4, ge=1, le=256)
    attempts: int = Field(3, ge=1, le=20)
    http_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, le=600)
    timeout_s: float = Field(120.0, gt=0, le=3600)
    max_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0, le=2)


def load_settings(ref: str | os.PathLike = "default", **overrides: Any) -> tuple[Settings, Path]:
    """(the settings, the rubric file) from a YAML in params/judge/ (by name) or a path, with
    `overrides` (None values left out) on top. A relative rubric is relative to the settings file,
    else to the repo root; a missing one is a ParamsError."""
    try:
        path = paths.find_yaml(ref, JUDGE_DIR, "judge settings")
    except FileNotFoundError as e:
        raise ParamsError(str(e)) from None
    body = paths.read_yaml(path, ParamsError, paths.display(path)) or {}
    if not isinstance(body, Mapping):
        raise ParamsError(f"{paths.display(path)}: expected a mapping of settings, got {type(body).__name__}")
    body = {**body, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        settings = Settings.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ParamsError(f"{paths.display(path)}: {problems}") from None
    if overrides.get("rubric") is not None:  # given on the command line: from the cwd, else the repo root
        rubric = Path(settings.rubric).expanduser()
        rubric = rubric if rubric.is_file() else paths.resolve_project_path(settings.rubric)
    else:  # in the settings file: beside it
        rubric = path.parent / Path(settings.rubric).expanduser()
    if not rubric.is_file():
        raise ParamsError(f"rubric {paths.display(rubric)} not found: give an existing file (--rubric FILE), e.g. "
                          f"a copy of {paths.display(JUDGE_DIR / 'rubric.md')} you edited.")
    return settings, rubric


def rubric_hash(text: str) -> str:
    """12 hex digits of the rubric's text: verdicts under another rubric are another set."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def api_base(endpoint: str) -> str:
    """The API's base URL as the openai client takes it: 'http://host:8000' -> 'http://host:8000/v1'."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ParamsError(f"--endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def shown_endpoint(endpoint: str) -> str:
    """The endpoint as recorded: no user:password and no query string (where some services put keys)."""
    parts = urlsplit(api_base(endpoint))
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def read_key(api_key_env: str | None) -> str | None:
    """The key from the environment variable named `api_key_env` (None: no key); a ParamsError when
    one is named and not set, before anything is asked."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ParamsError(f"the judge's key is to come from ${api_key_env}, which is not set (or empty): "
                          f"export {api_key_env}=... first, or name another variable with --api-key-env.")
    return key
