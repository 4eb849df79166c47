"""The chat markers read off the tokenizer's own template, and the check that every example keeps answer tokens."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError, ModelError


@dataclass(frozen=True)
class Markers:
    """Text that opens a user turn and an assistant turn in this tokenizer's chat template."""
    instruction: str
    response: str


_SENTINELS = ("QQQ_SYSTEM_111", "QQQ_USER_222", "QQQ_ASSISTANT_333", "QQQ_USER_444")


def derive_markers(tokenizer) -> Markers:
    """Render a sample conversation with the tokenizer's own template and read the markers off it.

    response = what stands between the end of a user turn and an assistant answer;
    instruction = what stands between the end of an assistant turn and the next user message.
    Never hard-coded per model: a wrong marker masks every label and training "works" at loss 0.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template: "
                         "use an instruct/chat model, or set tokenizer.chat_template.")
    s, u1, a1, u2 = _SENTINELS

    def render(messages, add_generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    system = {"role": "system", "content": s}
    try:
        one_turn = render([system, {"role": "user", "content": u1}])
        with_answer = render([system, {"role": "user", "content": u1}, {"role": "assistant", "content": a1}])
        two_turns = render([system, {"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                            {"role": "user", "content": u2}])
        prompt = render([system, {"role": "user", "content": u1}], add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. role alternation)
        raise ModelError(f"the chat template cannot render system/user/assistant turns: {e}") from None
    user_end = one_turn[one_turn.index(u1) + len(u1):]
    between_ua = with_answer[with_answer.index(u1) + len(u1):with_answer.index(a1)]
    response = between_ua[len(user_end):] if between_ua.startswith(user_end) else between_ua
    generation = prompt[len(one_turn):] if prompt.startswith(one_turn) else ""
    answer_end = with_answer[with_answer.index(a1) + len(a1):]
    between_au = two_turns[two_turns.index(a1) + len(a1):two_turns.index(u2)]
    closing = answer_end.rstrip("\n")
    instruction = between_au[len(closing):] if between_au.startswith(closing) else between_au
    instruction = instruction.lstrip("\n") if instruction.strip() else instruction
    if generation.strip() and generation.strip() != response.strip():
        response = generation  # the generation prompt is what inference will see: trust it
    if not response.strip() or not instruction.strip():
        raise ModelError(f"could not derive the chat markers from the template "
                         f"(instruction={instruction!r}, response={response!r}): it has no visible "
                         "user/assistant headers, so answer-only training cannot find the answers.")
    return Markers(instruction=instruction, response=response)


def label_counts(examples, tokenizer, markers: Markers) -> list[int]:
    """Answer tokens kept per example after response-only masking, by Unsloth's own masker."""
    from unsloth.chat_templates import train_on_responses_only

    masker = train_on_responses_only(None, instruction_part=markers.instruction, response_part=markers.response,
                                     tokenizer=tokenizer, return_function=True)
    ids = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"]
           for m in examples["messages"]]
    labels = masker({"input_ids": ids})["labels"]
    return [sum(1 for x in row if x != -100) for row in labels]


def check_labels(split: str, ids: list[str], counts: list[int], markers: Markers) -> None:
    """Fail naming every example that would train on nothing (a marker mismatch)."""
    empty = [i for i, n in zip(ids, counts) if n == 0]
    if empty:
        raise DataError(
            f"{len(empty)} of {len(ids)} {split} example(s) keep no answer token after response-only "
            f"masking: {', '.join(empty)}. The markers {markers.instruction!r} / {markers.response!r} "
            "do not match how these examples are rendered; check the tokenizer's chat template.")
