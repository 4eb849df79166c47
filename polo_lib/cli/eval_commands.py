"""The subcommands that judge runs: compare (paired statistics), judge (an LLM judge), rate (people)."""
from __future__ import annotations

import sys

from .. import reports, runs
from ..errors import ParamsError
from .common import _print_json, _records, _width


def _paired_table(rows, what: str) -> str:
    """A paired comparison's rows (compare.paired, replicates.compared) as a terminal table: each side's
    mean with its interval, the difference with its paired interval, p and the verdict."""
    import pandas as pd

    def cells(prefix: str) -> list[str]:
        return [reports.interval_text(*v) for v in rows[[prefix, f"{prefix}_low", f"{prefix}_high"]].values]

    shown = pd.DataFrame({"metric": rows["metric"], "baseline": cells("baseline"), what: cells("other"),
                          f"{what} - baseline": cells("delta"), "p": rows["p_value"], "verdict": rows["verdict"]})
    return reports.text_table(shown.set_index("metric"), _width(), limit=40)


def cmd_compare(args) -> int:

    from .. import compare, replicates

    if any(replicates.is_group_ref(r) for r in args.run_ids):
        return _compare_groups(args)
    table = compare.paired([runs.lookup(r) for r in args.run_ids])
    if args.json:
        _print_json(_records(table.reset_index()))
        return 0
    for run_id, part in table.groupby(level="run", sort=False):
        rows = part.reset_index()
        first = rows["baseline_run"].iloc[0]
        print(f"{run_id} against {first} (the baseline), {int(rows['n'].max())} examples, paired:")
        print(_paired_table(rows, "run") + "\n")
    return 0


def _compare_groups(args) -> int:
    import pandas as pd

    from .. import replicates
    from ..errors import RunError

    singles = [r for r in args.run_ids if not replicates.is_group_ref(r)]
    if singles:
        raise RunError(f"compare takes runs or replicate groups, not both: {', '.join(singles)} "
                       "is not a group id (rep-...).")
    summaries = replicates.summaries(args.run_ids)
    pooled = replicates.compared(args.run_ids)
    if args.json:
        _print_json({"groups": _records(summaries.reset_index()), "pooled": _records(pooled.reset_index())})
        return 0
    for group, part in summaries.groupby(level="group", sort=False):
        rows = part.reset_index()
        shown = pd.DataFrame({"metric": rows["metric"],
                              "mean across seeds": [reports.interval_text(*v)
                                                    for v in rows[["mean", "low", "high"]].values],
                              "sd": rows["sd"],
                              "per seed": [" ".join(f"{x:.4g}" for x in v) for v in rows["per_seed"]]})
        print(f"group {group}: {int(rows['seeds'].max())} seeds, {int(rows['examples'].max())} examples each "
              "(interval: t over the seeds' means):")
        print(reports.text_table(shown.set_index("metric"), _width(), limit=40) + "\n")
    for group, part in (pooled.groupby(level="group", sort=False) if not pooled.empty else []):
        rows = part.reset_index()
        print(f"{group} against {rows['baseline_group'].iloc[0]} (the baseline), {int(rows['n'].max())} pairs "
              "(seed index, example), pooled:")
        print(_paired_table(rows, "group") + "\n")
    return 0


def cmd_judge(args) -> int:
    from .. import judge

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


def cmd_rate(args) -> int:
    from .. import ratings

    run = runs.lookup(args.run_id)
    against = runs.lookup(args.against) if args.against else None
    task = ratings.load_task(run, against)  # no evaluation, other examples: said before anything starts
    if not (args.results or args.export_pairs):
        rater = ratings.check_rater(args.rater)
        from ..deploy import rate_app

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

