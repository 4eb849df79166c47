"""Peak memory of the evaluate stage (base then tuned model, evaluate.predict), one process per figure.

    python -m benchmarks.evaluate_memory setup   PARAMS            # prepare data, train 2 steps; prints the run id
    python -m benchmarks.evaluate_memory measure PARAMS RUN_ID     # one JSON line: peak RSS before/after predict

Set POLO_OUTPUTS and POLO_PROCESSED_DIR to a scratch folder first. `measure` is meant to run in a
fresh process each time: VmHWM is this process's high-water mark, so a second measurement in
the same process would inherit the first one's peak. On a GPU it adds torch's peak allocation.
"""
from __future__ import annotations

import json
import sys
import time

from polo_lib.model import import_unsloth

import_unsloth()  # before transformers, which probe imports
from benchmarks.training.probe import peak_memory, peak_rss_bytes  # noqa: E402

# Small and fast, but the same models: what evaluation holds in memory is the weights, not the batch.
EVAL_OVERRIDES = {"evaluation.limit": 2, "evaluation.max_new_tokens": 8, "evaluation.batch_size": 2}


def setup(params_file: str) -> str:
    from polo_lib import data, model, params, runs, train

    cfg = params.load(params_file, overrides={"max_steps": 2, "eval_steps": 2, "save_steps": 2})
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    run = runs.open_run(cfg)
    lm = model.load(cfg)
    session = train.build(lm, data.load_processed(cfg.data), cfg, run, live=False)
    train.fit(session)
    train.finish(session)
    return run.id


def measure(params_file: str, run_id: str) -> dict:
    from polo_lib import data, evaluate, params, runs

    cfg = params.load(params_file, overrides={"max_steps": 2, "eval_steps": 2, "save_steps": 2, **EVAL_OVERRIDES})
    run = runs.lookup(run_id)
    dataset = data.load_processed(cfg.data)
    before = peak_rss_bytes()
    start = time.perf_counter()
    evaluate.predict(runs.start_evaluation(run, cfg), cfg, dataset)
    return {"params": params_file, "run": run_id, **EVAL_OVERRIDES,
            "peak_rss_mib_before_predict": round(before / 2 ** 20, 1), **peak_memory(),
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["setup"] and len(sys.argv) == 3:
        print(setup(sys.argv[2]))
    elif sys.argv[1:2] == ["measure"] and len(sys.argv) == 4:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
    else:
        sys.exit(__doc__)
