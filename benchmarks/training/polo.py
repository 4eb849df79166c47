"""(a) polo_lib's training path, the one `polo run`, train.ipynb and sweeps use:
pipeline.train_stage (data -> plan -> memory check -> model.load -> train.build -> fit -> finish).

    python polo.py SETTINGS.json RESULT.json
"""
import sys
import time

started = time.perf_counter()

from polo_lib.model import import_unsloth  # noqa: E402

import_unsloth()
import probe  # noqa: E402

from polo_lib import params, pipeline, runs  # noqa: E402

s = probe.settings()
cfg = params.load(s["params_file"], overrides=s["polo_overrides"])
step_probe = probe.StepProbe()
session = pipeline.train_stage(cfg, runs.open_run(cfg, stage="train"), callbacks=[step_probe], live=False)
# train.fit's step-0 evaluation ends before step 1, outside the measured window
probe.finish(sys.argv[2], step_probe, s, started, step_probe.began, session.result["trainable_params"],
             probe.label_tokens(session.trainer.train_dataset))
