"""Generation and model loading for inference: what evaluation, training samples, export checks,
the server and the chat app share. Every name below is importable from polo_lib.inference.

  generation  pick_input_device, input_device, encode_prompts (token ids go where the model reads
              them: Unsloth's fast generation does not move them); prompt_text, generate (batched,
              left padding, stops at EOS) and generate_prompts (streaming: text as it comes, stop
              strings, seed, cancelling), chats_of, answers_of
  decoding    Generation, text_of / whole_text / showable (never half a character), cut_note,
              shown_text, without_cut_note, cut_at_stop, and the writer that streams each row
  loading     load_base, load_tuned (base + the run's model: adapter_aligned/ once aligned, else adapter/),
              load_sft and is_aligned (an aligned run's SFT adapter), merge_to_16bit, load_merged, run_tokenizer
              (the chat template and EOS training used), with_tokenizer, require_adapter, free_memory
  checks      check_generates (one greedy answer from a reloaded export), greedy_ids (export parity),
              reload_options and reload_and_check (an export reloaded and answering)

A run is passed in, never looked up: this package sits beside model and device and imports nothing
above them (runs, evaluate, train, deploy). A run here is anything with `id` and `adapter` (its
adapter/ folder), such as runs.Run.
"""
from .checks import check_generates, greedy_ids, reload_and_check, reload_options
from .decoding import (
    BROKEN,
    Generation,
    cut_at_stop,
    cut_note,
    showable,
    shown_text,
    text_of,
    whole_text,
    without_cut_note,
)
from .generation import (
    answers_of,
    chats_of,
    encode_prompts,
    generate,
    generate_prompts,
    input_device,
    pick_input_device,
    prompt_text,
)
from .loading import (
    free_memory,
    is_aligned,
    load_base,
    load_merged,
    load_sft,
    load_tuned,
    merge_to_16bit,
    require_adapter,
    run_tokenizer,
    with_tokenizer,
)

__all__ = [
    "BROKEN", "Generation", "answers_of", "chats_of", "check_generates", "cut_at_stop", "cut_note",
    "encode_prompts", "free_memory", "generate", "generate_prompts", "greedy_ids", "input_device", "is_aligned",
    "load_base", "load_merged", "load_sft", "load_tuned", "merge_to_16bit", "pick_input_device", "prompt_text",
    "reload_and_check", "reload_options", "require_adapter", "run_tokenizer", "showable", "shown_text",
    "text_of", "whole_text", "with_tokenizer", "without_cut_note",
]
