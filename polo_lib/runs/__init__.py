"""Run folders: one per experiment, never overwritten, holding everything about it.

outputs/runs/<run_id>/  params.yaml, manifest.json, notebooks/, checkpoints/, adapter/,
logs/, eval/<evaluation id>/, plots/, summary.json, report.md. run_id = UTC time + params name
+ short hash.

- `open_run` makes a run (or continues one with the same params) and starts a stage;
  `finish_stage` ends it. Every path (notebooks, pipeline, sweeps) uses these two.
- Each evaluation of a run gets its own folder, eval/<id>/, with the params it used
  (`start_evaluation`): evaluating again never overwrites an earlier one; `Run.evaluation()`
  is the latest finished one, and summary.json lists them all.
- `lookup` is the one way to name a run: its id, a unique prefix, or `latest`.
- `RunSummary` is summary.json's schema: `Run.update_summary` writes it, `read_summary` reads it.
- `registry` lists every run, damaged ones included; `tag_replicate` puts a run into a replicate
  group (same params, another seed), `replicate_groups` finds them. Reports are in `reports`.

The names below are the package's: `from polo_lib import runs; runs.open_run(...)`.

  summary     summary.json's schema (RunSummary, its sections) and its one reader, read_summary
  folder      a run's folder: Run (manifest, summary, stages), Evaluation, start_evaluation
  catalog     every run folder: lookup (id, prefix, folder, latest), registry (the table of all runs)
  provenance  git state, package versions; the notebook filter and Jupyter save hook (make setup)
  lifecycle   open_run (a new run, or one continued with the same params) and finish_stage
"""
from .catalog import (  # noqa: F401
    KINDS,
    LATEST,
    REF_HELP,
    REGISTRY_COLUMNS,
    STATUSES,
    kind_of,
    lookup,
    registry,
    replicate_groups,
    run_folders,
    tag_replicate,
)
from .folder import Evaluation, Run, start_evaluation  # noqa: F401
from .lifecycle import (  # noqa: F401
    ACCUMULATION,
    MICRO_BATCH,
    SUBFOLDERS,
    check_writable,
    finish_stage,
    new_run_id,
    open_run,
)
from .provenance import (  # noqa: F401
    NOTEBOOK_FILTER_EXTRA_KEYS,
    PACKAGES,
    after_jupyter_save,
    git_state,
    install_jupyter_hook,
    install_notebook_filter,
    notebook_filter,
    package_versions,
)
from .summary import EvaluationSummary, RunSummary, SweepSummary, TrainingSummary, read_summary  # noqa: F401
