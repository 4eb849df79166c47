"""Greedy generations for the first examples of a split, before and after training, side by side."""
from __future__ import annotations

import pandas as pd

from ..notebook import readable


def sample(lm, split, n: int = 3, max_new_tokens: int = 128, progress: str | None = "samples") -> pd.DataFrame:
    """Greedy generations for the first n examples of a split (id, original, reference, output),
    under a bar named `progress` (minutes on a busy CPU; None: no bar)."""
    from ..inference import chats_of, generate

    rows = split.select(range(min(n, len(split))))
    outputs = generate(lm, chats_of(rows), max_new_tokens=max_new_tokens, progress=progress)
    return pd.DataFrame({"id": rows["id"], "original": rows["original"],
                         "reference": rows["simplified"], "output": [g.text for g in outputs]}).set_index("id")


def side_by_side(before: pd.DataFrame, after: pd.DataFrame | None = None):
    """The samples before training (and after, beside them) to read: every text whole, wrapped
    (notebook.readable; `.data` is the DataFrame)."""
    table = before.rename(columns={"output": "before training"})
    if after is not None:
        table["after training"] = after["output"]
    return readable(table)
