"""(a) polo_lib's training path, as `polo run` / train.ipynb use it: params -> model.load ->
train.build (marker derivation, label guard, logging callbacks) -> train.fit.

    python polo.py SETTINGS.json RESULT.json
"""
import time

started = time.perf_counter()

from polo_lib.model import import_unsloth  # noqa: E402

import_unsloth()
from polo_lib import data, model, params, runs, train  # noqa: E402

import probe  # noqa: E402

s = probe.settings()
cfg = params.load(s["params_file"], overrides=s["polo_overrides"])
run = runs.open_run(cfg, stage="train")
lm = model.load(cfg)
session = train.build(lm, data.load_processed(cfg.data), cfg, run, live=False)
# train.fit's step-0 evaluation ends before step 1, outside the measured window
probe.measure(session.trainer, lm.model, s, started, fit=lambda: train.fit(session))
