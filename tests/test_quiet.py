"""Library messages that say nothing to this user are not printed: the lines are matched exactly
where the library prints them, so a reworded message shows up here rather than on screen."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from polo_lib import train
from polo_lib.unsloth_first import CPU_BANNER, without_lines


def test_without_lines_drops_only_the_matching_lines_even_when_the_block_raises(capsys):
    with without_lines("Dropping columns"):
        print("Unsloth: Dropping columns the model is not fed: ['messages']")
        print("Unsloth: Warning: the markers matched nothing")
    assert capsys.readouterr().out == "Unsloth: Warning: the markers matched nothing\n"
    with pytest.raises(ValueError), without_lines("noise"):
        print("noise\nkept")
        raise ValueError
    assert capsys.readouterr().out == "kept\n"


@pytest.mark.parametrize("module,text", [
    ("unsloth._cpu_init", CPU_BANNER),  # silenced where nothing trains (cli._unsloth_first)
    ("unsloth_zoo.dataset_utils", train.DROPPING_COLUMNS),  # silenced in train.build
])
def test_the_silenced_messages_are_what_the_libraries_print(module, text):
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    assert text in source
