"""Load test of a running `polo serve`: latency and tokens/s with CONCURRENCY clients at once.

    polo serve <run> --port 8000                                  # in another terminal
    python -m benchmarks.serve_load http://127.0.0.1:8000 1 8     # 8 requests, one at a time
    python -m benchmarks.serve_load http://127.0.0.1:8000 8 8     # the same 8 requests, 8 at once

Prints one JSON line. Only HTTP: it loads no model and imports nothing of polo_lib.deploy, so it
measures any server that speaks /v1/chat/completions.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

RAW_FILE = "data/raw/yolo_v1.json"


def load_test(base_url: str, concurrency: int, requests: int = 8, max_tokens: int = 64,
              raw_file: str = RAW_FILE) -> dict[str, Any]:
    """Latency and tokens/s of a running server with `concurrency` clients sending Easy prompts.

    The same `requests` chats (the first YOLO paragraphs, greedy, `max_tokens` each) at every
    concurrency, sent in waves of `concurrency` at once, so the levels compare like for like.
    One request first warms the server up and is not counted.
    """
    import concurrent.futures as cf
    import statistics

    import httpx

    from polo_lib import prompts
    from polo_lib.data import group_paragraphs, load_raw

    paragraphs = [p.original for p in group_paragraphs(load_raw(raw_file))][:requests]
    url = base_url.rstrip("/") + "/v1/chat/completions"

    def ask(text: str) -> tuple[float, int, int]:
        body = {"messages": prompts.build_messages(text), "max_tokens": max_tokens}
        start = time.perf_counter()
        r = httpx.post(url, json=body, timeout=900)
        r.raise_for_status()
        usage = r.json()["usage"]
        return time.perf_counter() - start, usage["completion_tokens"], usage["prompt_tokens"]

    ask(paragraphs[0])
    results, start = [], time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for i in range(0, len(paragraphs), concurrency):
            results += list(pool.map(ask, paragraphs[i:i + concurrency]))
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "max_tokens": max_tokens,
            "prompt_tokens_mean": round(statistics.mean(r[2] for r in results)),
            "latency_s_median": round(statistics.median(latencies), 2), "latency_s_max": round(max(latencies), 2),
            "completion_tokens": tokens, "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("concurrency", type=_positive, help="requests in flight at once")
    parser.add_argument("requests", type=_positive, nargs="?", default=8,
                        help="how many requests (the first YOLO paragraphs), default 8")
    parser.add_argument("--max-tokens", type=_positive, default=64, help="max_tokens of each request")
    args = parser.parse_args(argv)
    print(json.dumps(load_test(args.url, args.concurrency, args.requests, args.max_tokens)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
