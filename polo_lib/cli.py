"""`polo`: run the notebooks headless into one run folder (papermill), and look at runs.

    polo run cpu --set epochs=1 --set training.learning_rate=5e-4
    polo run params/my.yaml --stages prepare,train --run-id 20261130-...-cpu-1a2b3c4d

Params and overrides are validated before any notebook starts; each stage's executed
notebook is saved in the run folder; a failing stage marks the run failed and names the
executed notebook and cell.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import yaml

from . import params as params_lib
from . import paths, runs
from .errors import ParamsError, PoloError

STAGES = {"prepare": "prepare_data.ipynb", "train": "train.ipynb", "evaluate": "evaluate.ipynb"}


def available_stages() -> list[str]:
    return [s for s, nb in STAGES.items() if (paths.NOTEBOOKS_DIR / nb).is_file()]


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; values parsed as YAML (1e-4 -> float, true -> bool, [a, b] -> list)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set '{item}': expected key=value, e.g. --set learning_rate=1e-4")
        parsed = yaml.safe_load(value) if value.strip() else ""
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def run_pipeline(params_file: str, overrides: dict[str, Any] | None = None,
                 stages: Sequence[str] | None = None, run_id: str | None = None,
                 name: str | None = None, preflight: bool = True, log=print) -> runs.Run:
    """Validate (params, then the preflight checks), open the run folder, then execute each
    stage's notebook into it. `name` replaces the params name in the run id (queue variants)."""
    import papermill as pm

    from . import preflight as preflight_lib

    stages = list(stages or available_stages())
    unknown = [s for s in stages if s not in available_stages()]
    if unknown:
        raise PoloError(f"unknown stage(s) {unknown}; available: {', '.join(available_stages())}")
    cfg = params_lib.load(params_file, overrides=overrides)  # raises on any problem, before any work
    if name:
        cfg = cfg.model_copy(update={"name": name})
    if preflight and "train" in stages and run_id is None:
        report = preflight_lib.run_checks(params_file, overrides)
        if not report.ok:
            raise PoloError("preflight failed, nothing was started:\n" +
                            "\n".join(f"  {f}" for f in report.failures()))
    dotted, _ = params_lib.normalize_overrides(overrides or {})
    # Evaluating an existing run again may change how (limit, decoding), never what was trained.
    run = runs.open_run(cfg, run_id, may_differ=("evaluation",) if stages == ["evaluate"] else ())
    log(f"run {run.id}\n  folder: {run.path}")
    parameters = {"params_file": str(params_lib.resolve_file(params_file)), "run_id": run.id,
                  "overrides": dotted}
    for i, stage in enumerate(stages, 1):
        notebook = STAGES[stage]
        out = run.notebooks / notebook
        log(f"[{i}/{len(stages)}] {stage}: {notebook}")
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(paths.NOTEBOOKS_DIR / notebook), str(out), parameters=parameters,
                                kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=True)
        except pm.PapermillExecutionError as e:
            where = f"{out}, cell {e.exec_count}"
            run.fail(f"{e.ename}: {e.evalue}", where)
            raise PoloError(f"stage '{stage}' failed: {e.ename}: {e.evalue}\n  see {where}") from None
        log(f"  {stage} done in {time.perf_counter() - start:.0f} s")
    run.update_manifest(status="finished")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run notebooks headless into one run folder")
    p_run.add_argument("params", help="a name in params/ (cpu, default, smoke) or a path to a .yaml file")
    p_run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param: learning_rate=1e-4, epochs=2, training.max_steps=10")
    p_run.add_argument("--stages", default=None,
                       help=f"comma-separated, in order (default: {','.join(available_stages())})")
    p_run.add_argument("--run-id", default=None, help="continue this run instead of starting a new one")
    p_run.add_argument("--no-preflight", action="store_true", help="skip the checks before training")
    p_pre = sub.add_parser("preflight", help="check params, files, model, data, template and memory; train nothing")
    p_pre.add_argument("params")
    p_pre.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p_plan = sub.add_parser("plan", help="what a params file would run with on this or another machine "
                                         "(precision, optimizer, schedule, parameters, memory); loads nothing")
    p_plan.add_argument("params")
    p_plan.add_argument("--device", default="here",
                        help="here (this machine) or a profile: t4, a10g, rtx4090, h100, h200, "
                             "cuda-no-bitsandbytes, cpu (default: here)")
    p_plan.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p_queue = sub.add_parser("queue", help="run a queue of variants (or a chained pipeline) from a YAML file")
    p_queue.add_argument("file")
    p_list = sub.add_parser("list", help="every run in outputs/runs, failed and damaged ones included")
    p_list.add_argument("--status", default=None, help="only runs with this status (finished, failed, ...)")
    p_report = sub.add_parser("report", help="regenerate a run's report.md from its folder")
    p_report.add_argument("run_id")
    # --- sweeps (polo_lib/sweeps.py)
    p_sweep = sub.add_parser("sweep", help="hyperparameter sweep (Optuna, or Ray Tune): each trial a run folder")
    p_sweep.add_argument("file", nargs="?", help="a sweep file: a name in sweeps/ (smoke, cpu_lr) or a path")
    p_sweep.add_argument("--resume", default=None, metavar="SWEEP_ID", help="continue an interrupted sweep")
    p_sweep.add_argument("--engine", default="optuna", choices=["optuna", "ray"],
                         help="optuna: trials in this process; ray: Ray Tune, one trial per GPU or per N CPUs")
    p_sweep.add_argument("--address", default=None, help="ray: an existing cluster (e.g. auto or HOST:6379)")
    p_sweep.add_argument("--n-trials", type=int, default=None, help="replace the file's n_trials (e.g. a quick try)")
    # --- export and serve (issue 10) ---
    p_export = sub.add_parser("export", help="export a run: its adapter, a merged 16-bit model, or GGUF")
    p_export.add_argument("run_id", help="a run id, or 'latest' (the newest finished run)")
    p_export.add_argument("--format", required=True, choices=("adapter", "merged", "gguf"))
    p_export.add_argument("--gguf-types", default="f16,q8_0", help="comma-separated: f16, bf16, q8_0")
    p_export.add_argument("--force", action="store_true", help="replace an existing export/<format>/")
    p_serve = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions) for a run's model")
    p_serve.add_argument("run_id", help="a run id, or 'latest'")
    p_serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (Docker)")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--merged", action="store_true", help="serve export/merged instead of base + adapter")
    p_serve.add_argument("--max-batch-size", type=int, default=8, help="requests generated together")
    p_serve.add_argument("--batch-wait-ms", type=float, default=50, help="how long a batch waits for company")
    p_serve.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask")
    p_chat = sub.add_parser("chat", help="Gradio app: chat, base vs tuned, explain a paragraph")
    p_chat.add_argument("run_id", help="a run id, or 'latest'")
    p_chat.add_argument("--host", default="127.0.0.1")
    p_chat.add_argument("--port", type=int, default=7860)
    p_chat.add_argument("--no-base", action="store_true", help="load only the tuned model (half the memory)")
    # --- end export and serve ---
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
            run_pipeline(args.params, parse_sets(args.sets), stages, args.run_id, preflight=not args.no_preflight)
        elif args.command == "preflight":
            from .preflight import run_checks

            report = run_checks(args.params, parse_sets(args.sets))
            print(report)
            return 0 if report.ok else 1
        elif args.command == "plan":
            from . import device, preflight

            cfg = params_lib.load(args.params, overrides=parse_sets(args.sets))
            tables = preflight.plan_tables(cfg, device.profile(args.device))
            import pandas as pd

            with pd.option_context("display.width", 160, "display.max_colwidth", 100):
                for title, table in tables.items():
                    print(f"## {title}\n{table.to_string()}\n")
        elif args.command == "queue":
            from .queues import run_queue

            table, folder = run_queue(args.file)
            print(table.to_string(index=False))
            print(f"\nresults: {folder / 'results.csv'}\nreport:  {folder / 'report.md'}")
            return 0 if (table["status"] == "finished").all() else 1
        elif args.command == "list":
            import pandas as pd

            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(runs.registry(args.status).to_string())
        elif args.command == "sweep":
            from .sweeps import run_sweep

            if args.address and args.engine != "ray":
                raise PoloError("--address is for --engine ray")
            result = run_sweep(args.file, resume=args.resume, engine=args.engine, address=args.address,
                               n_trials=args.n_trials)
            import pandas as pd

            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
                print(result.table.drop(columns=["error"], errors="ignore").to_string(index=False))
            best = result.best
            print(f"\nbest: trial {best['trial']}, run {best['run_id']}, objective {best['value']:.4g}"
                  if best else "\nbest: none (no trial finished)")
            return 0 if best else 1
        elif args.command == "report":
            print(runs.write_report(runs.get_run(args.run_id)))
        elif args.command in ("export", "serve", "chat"):
            return _export_serve_chat(args)
    except PoloError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


def _export_serve_chat(args) -> int:
    """`polo export / serve / chat`: a run id or 'latest'; errors are PoloErrors, raised before loading."""
    from .model import import_unsloth

    import_unsloth()
    if args.command == "export":
        from . import export

        types = [t.strip() for t in args.gguf_types.split(",") if t.strip()]
        print(export.export(export.resolve_run(args.run_id), args.format, types, overwrite=args.force))
    elif args.command == "serve":
        from . import serve

        for name in ("max_batch_size", "max_tokens_limit"):
            if getattr(args, name) < 1:
                raise ParamsError(f"--{name.replace('_', '-')} must be at least 1")
        serve.serve(args.run_id, args.host, args.port, merged=args.merged, max_batch_size=args.max_batch_size,
                    batch_wait_ms=args.batch_wait_ms, max_tokens_limit=args.max_tokens_limit)
    else:
        from . import chat_app

        chat_app.launch(args.run_id, args.host, args.port, with_base=not args.no_base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
