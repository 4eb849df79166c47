"""The subcommands that make and read runs: run, demo, preflight, plan, queue, list, report, sweep."""
from __future__ import annotations

import functools
import json

from .. import params as params_lib
from .. import paths, pipeline, reports, runs
from ..errors import PoloError
from .common import LIST_COLUMNS, _print_json, _quiet_unless_json, _records, _unsloth_first, _width, parse_sets


def cmd_run(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if args.seeds is not None:
        from .. import replicates

        if args.run_id:
            raise PoloError("--seeds starts new runs; it cannot continue --run-id")
        replicates.run_replicates(args.params, args.seeds, parse_sets(args.sets), stages,
                                  preflight=not args.no_preflight,
                                  execute=functools.partial(pipeline.run_pipeline, in_process=args.in_process))
        return 0
    pipeline.run_pipeline(args.params, parse_sets(args.sets), stages, args.run_id, preflight=not args.no_preflight,
                          in_process=args.in_process)
    return 0


def cmd_demo(args) -> int:
    """`make demo`: the whole pipeline on this machine into one new run folder, then its headline figures."""
    import time

    start = time.perf_counter()
    run = pipeline.run_pipeline(args.params)
    print(f"\n== demo finished in {time.perf_counter() - start:.0f} s ==")
    print("\n".join(reports.headline(run)))
    return 0


def cmd_preflight(args) -> int:
    from ..preflight import run_checks

    report = run_checks(params_lib.load(args.params, overrides=parse_sets(args.sets)))
    print(report)
    return 0 if report.ok else 1


def cmd_plan(args) -> int:
    from .. import device, preflight

    _unsloth_first()  # plan loads nothing: no "training on CPU" banner; its own "speed" row says it
    cfg = params_lib.load(args.params, overrides=parse_sets(args.sets))
    for title, table in preflight.plan_tables(cfg, device.profile(args.device)).items():
        print(f"## {title}\n{reports.text_table(table, _width(), limit=200)}\n")
    return 0


def cmd_queue(args) -> int:
    from ..queues import run_queue

    with _quiet_unless_json(args):
        table, folder = run_queue(args.file, execute=functools.partial(pipeline.run_pipeline,
                                                                        in_process=args.in_process))
    ok = bool((table["status"] == "finished").all())
    if args.json:
        _print_json({"folder": str(folder), "all_finished": ok, "runs": _records(table)})
    else:
        print(reports.text_table(table, _width(), limit=40, note=f"the whole table: {folder / 'results.csv'}"))
        print(f"\nresults: {folder / 'results.csv'}\nreport:  {folder / 'report.md'}")
    return 0 if ok else 1


def cmd_list(args) -> int:
    table = runs.registry(args.status)
    if args.json:
        _print_json(_records(table))
    elif table.empty:
        print(f"no {args.status + ' ' if args.status else ''}runs in {paths.runs_dir()}")
    else:
        print(reports.text_table(table[LIST_COLUMNS], _width(), note="all of it: polo list --json"))
    return 0


def cmd_report(args) -> int:
    run = runs.lookup(args.run_id, status=None)
    path = reports.write_report(run)
    if args.json:
        _print_json({"run_id": run.id, "folder": str(run.path), "report": str(path), "manifest": run.manifest(),
                     "summary": json.loads(run.summary_path.read_text(encoding="utf-8"))
                     if run.summary_path.is_file() else None})
    else:
        print(path)
    return 0


def cmd_sweep(args) -> int:
    from ..sweeps import run_sweep

    if args.address and args.engine != "ray":
        raise PoloError("--address is for --engine ray")
    with _quiet_unless_json(args):
        result = run_sweep(args.file, resume=args.resume, engine=args.engine, address=args.address,
                           n_trials=args.n_trials)
    best = result.best
    if args.json:
        _print_json({"sweep_id": result.sweep_id, "folder": str(result.folder), "best": best,
                     "trials": _records(result.table)})
        return 0 if best else 1
    print(reports.text_table(result.table, _width(), limit=40,
                             note=f"the whole table: {result.folder / 'results.csv'}"))
    print(f"\nbest: trial {best['trial']}, run {best['run_id']}, objective {best['value']:.4g}"
          if best else "\nbest: none (no trial finished)")
    return 0 if best else 1

