"""The errors polo_lib raises for users: one small family, each message says what to fix.

Anything else escaping polo_lib is a bug in polo_lib, not a user mistake.
"""
from __future__ import annotations


class PoloError(Exception):
    """Base class: a problem the user can fix; the message names the file/key/record."""


class ParamsError(PoloError):
    """A params file or override is unknown, mistyped or out of range."""


class DataError(PoloError):
    """The raw or processed data is malformed, or examples do not fit the model."""


class ModelError(PoloError):
    """A model name/path cannot be resolved or loaded, or will not fit in memory."""


class RunError(PoloError):
    """A run folder is missing, would be overwritten, or cannot be resumed."""


def bullet_list(problems: list[str], limit: int = 50) -> str:
    """Indented lines for a multi-problem message, cut at `limit` with a count."""
    shown = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(shown)


class EndpointError(PoloError):
    """An OpenAI-compatible endpoint (an LLM judge, a teacher) cannot be reached or refuses the key."""
