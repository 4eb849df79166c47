"""Three training paths for the same model, data and settings, each run as its own process.

polo.py          (a) polo_lib's training path: pipeline.train_stage, as polo run, train.ipynb and sweeps use it
unsloth_trl.py   (b) a bare Unsloth + TRL script, no polo_lib
peft_trainer.py  (c) plain transformers + PEFT with `transformers.Trainer` (+ bitsandbytes on a GPU)

Each reads the same settings JSON (written by `training_settings` in benchmarks/__main__.py,
whose `bench_training` starts the three scripts) through `probe.settings`, and writes one result
JSON through `probe.finish`. Only `probe` (with `memory`, the peak-RSS reader) is shared, and it imports nothing
from polo_lib.
"""
