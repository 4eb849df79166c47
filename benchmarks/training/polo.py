"""(a) polo_lib's training path, as `polo run` / train.ipynb use it: params -> model.load ->
train.build (marker derivation, label guard, logging callbacks) -> train.fit.

    python polo.py SETTINGS.json RESULT.json
"""
import sys
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
step_probe = probe.StepProbe()
session = train.build(lm, data.load_processed(cfg.data), cfg, run, live=False, callbacks=[step_probe])
trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
trained_from = time.perf_counter()
train.fit(session)  # its step-0 evaluation ends before step 1, outside the measured window
probe.finish(sys.argv[2], step_probe, s, started, trained_from, trainable)
