"""The Easy prompt, in one place: the system message and how a paragraph becomes a chat.

Training, evaluation and serving all build messages here, so the model always sees
the same instruction it was trained with.
"""
from __future__ import annotations

# English instructions: a small model's tokenizer spends ~2 tokens per Hangul syllable, so a
# Korean system prompt would cost ~300 tokens per example; this one costs ~60.
SYSTEM_PROMPT = (
    "You are Easy, an explainer who rewrites dense technical paper paragraphs as easy Korean. "
    "Keep every fact. Use short sentences in polite Korean (합니다체). Keep technical terms "
    "such as YOLO, IoU and CNN, and explain them in plain words the first time they appear."
)

USER_TEMPLATE = "Explain this paragraph in easy Korean:\n\n{original}"


def user_message(original: str) -> str:
    return USER_TEMPLATE.format(original=original.strip())


def build_messages(original: str, simplified: str | None = None) -> list[dict[str, str]]:
    """System + user (+ assistant when `simplified` is given, i.e. a training example)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_message(original)},
    ]
    if simplified is not None:
        messages.append({"role": "assistant", "content": simplified.strip()})
    return messages
