"""The smoke run tests/test_task_metrics.py reads: prepare, train with task metrics and every tracker,
evaluate, through the pipeline's stages, in its own process.

Its own process because W&B, once importable, is imported by every TRL import (about 1.7 s a
process, half a minute over the suite's kernels and subprocesses), so `make setup` keeps it out of
the venv's site-packages, in .venv/wandb/, and only this process appends it to its path. The W&B
offline records are read back here too, where wandb imports, into <outputs>/wandb_records.json.

    python tests/scored_run.py OVERRIDES_JSON [EXTRA_SITE]      (POLO_OUTPUTS says where)
"""
import json
import sys
from pathlib import Path

if len(sys.argv) > 2 and sys.argv[2]:
    sys.path.append(sys.argv[2])  # after the venv's own: only what the venv lacks (wandb) comes from there

from polo_lib.model import import_unsloth  # noqa: E402 - after the path, before transformers

import_unsloth()

import extra_metric  # noqa: E402 - tests/, this script's folder

from polo_lib import params, paths, pipeline, registry, runs  # noqa: E402

registry.register(extra_metric.METRIC)  # a metric added in one place: scored, logged, plotted, reported


def wandb_records(path: Path) -> list[dict]:
    """The records of a W&B offline run file (its leveldb-style log: a 7-byte header, then 32 KiB
    blocks of chunks with a 7-byte header each), parsed with W&B's own protobuf Record, as plain data."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, pending, out = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B", path
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            what = record.WhichOneof("record_type")
            if what == "run":
                out.append({"kind": what, "run_id": record.run.run_id, "project": record.run.project})
            elif what in ("history", "summary", "config"):
                items = {"history": record.history.item, "summary": record.summary.update,
                         "config": record.config.update}[what]
                out.append({"kind": what, "items": {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                    for i in items}})
    return out


cfg = params.load("smoke", overrides=json.loads(sys.argv[1]))
pipeline.prepare_stage(cfg)
run = runs.open_run(cfg, stage="train")
pipeline.train_stage(cfg, run, live=False)
run.start_stage("evaluate")
pipeline.evaluate_stage(cfg, run)
files = sorted((paths.outputs_dir() / "wandb").glob(f"offline-run-*-{run.id}/run-{run.id}.wandb"))
(paths.outputs_dir() / "wandb_records.json").write_text(
    json.dumps({"files": len(files), "records": [r for f in files for r in wandb_records(f)]}), encoding="utf-8")
print(run.path)
