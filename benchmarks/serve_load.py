"""Load test of a running `polo serve`: latency and tokens/s with CONCURRENCY clients at once.

    polo serve <run> --port 8000                                  # in another terminal
    python -m benchmarks.serve_load http://127.0.0.1:8000 1 8     # 8 requests, one at a time
    python -m benchmarks.serve_load http://127.0.0.1:8000 8 8     # the same 8 requests, 8 at once
    python -m benchmarks.serve_load http://127.0.0.1:8000 2000 --burst   # 2,000 at once: 200s and 503s
    python -m benchmarks.serve_load http://127.0.0.1:8000 8 8 --stream   # 8 streams at once: first-token latency

With --stream every request streams (server-sent events): it reports the time to the first content
piece (what a chat user waits before text appears), each stream's own tokens/s after that, and
the tokens/s of all streams together.

With --burst every request is sent at the same moment and none is retried: it counts the answers
by status (a bounded server answers 200 or 503, never drops a connection) and, given the server's
process id (--pid, Linux), its peak memory before and after. POLO_API_KEY is sent when set.

Prints one JSON line. Only HTTP: it loads no model and imports nothing of polo_lib.deploy, so it
measures any server that speaks /v1/chat/completions.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

RAW_FILE = "data/raw/yolo_v1.json"


def in_waves(ask, paragraphs: list[str], concurrency: int) -> tuple[list, float]:
    """One warm-up request, then `ask` on every paragraph, `concurrency` at a time in waves: the
    answers and the wall seconds of the waves."""
    import concurrent.futures as cf

    ask(paragraphs[0])
    results, start = [], time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for i in range(0, len(paragraphs), concurrency):
            results += list(pool.map(ask, paragraphs[i:i + concurrency]))
    return results, time.perf_counter() - start


def load_test(base_url: str, concurrency: int, requests: int = 8, max_tokens: int = 64,
              raw_file: str = RAW_FILE) -> dict[str, Any]:
    """Latency and tokens/s of a running server with `concurrency` clients sending Easy prompts.

    The same `requests` chats (the first YOLO paragraphs, greedy, `max_tokens` each) at every
    concurrency, sent in waves of `concurrency` at once, so the levels compare like for like.
    One request first warms the server up and is not counted.
    """
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

    results, wall = in_waves(ask, paragraphs, concurrency)
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "max_tokens": max_tokens,
            "prompt_tokens_mean": round(statistics.mean(r[2] for r in results)),
            "latency_s_median": round(statistics.median(latencies), 2), "latency_s_max": round(max(latencies), 2),
            "completion_tokens": tokens, "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1)}


def stream_test(base_url: str, concurrency: int, requests: int = 8, max_tokens: int = 64,
                raw_file: str = RAW_FILE, api_key: str | None = None) -> dict[str, Any]:
    """First-token latency and tokens/s of `concurrency` streams at once: the same chats as
    load_test, stream=true with stream_options.include_usage, in waves; one warm-up stream first."""
    import statistics

    import httpx

    from polo_lib import prompts
    from polo_lib.data import group_paragraphs, load_raw

    paragraphs = [p.original for p in group_paragraphs(load_raw(raw_file))][:requests]
    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ask(text: str) -> tuple[float, float, int]:
        """(seconds to the first content piece, seconds to the end, completion tokens)."""
        body = {"messages": prompts.build_messages(text), "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        start, first, tokens = time.perf_counter(), None, 0
        with httpx.stream("POST", url, json=body, headers=headers, timeout=900) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.read().decode(errors='replace')}")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"the stream ended with an error: {chunk['error']['message']}")
                if first is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter() - start
        return (first if first is not None else end), end, tokens

    results, wall = in_waves(ask, paragraphs, concurrency)
    firsts = [r[0] for r in results]
    tokens = sum(r[2] for r in results)
    # after its first piece a stream's own rate: the tokens that followed over the time they took
    rates = [(n - 1) / (end - first) for first, end, n in results if n > 1 and end > first]
    return {"concurrency": concurrency, "requests": len(results), "max_tokens": max_tokens, "stream": True,
            "first_token_s_median": round(statistics.median(firsts), 2), "first_token_s_max": round(max(firsts), 2),
            "latency_s_median": round(statistics.median(r[1] for r in results), 2),
            "stream_tokens_per_s_median": round(statistics.median(rates), 1) if rates else None,
            "completion_tokens": tokens, "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1)}


def burst(base_url: str, requests: int, max_tokens: int = 2, api_key: str | None = None,
          pid: int | None = None) -> dict[str, Any]:
    """`requests` short chats sent at the same moment, no retries: how many got each status (or
    a connection error), the wall time, and with `pid` the server's peak RSS before and after."""
    import asyncio
    import collections

    import httpx

    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    before = peak_rss_mib(pid)

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600, pool=None)) as client:
            async def ask(i: int) -> str:
                body = {"messages": [{"role": "user", "content": f"Explain grid cell {i} of YOLO."}],
                        "max_tokens": max_tokens}
                try:
                    r = await client.post(url, json=body, headers=headers)
                except httpx.TransportError as e:
                    return type(e).__name__
                missing = r.status_code == 503 and not r.headers.get("retry-after")
                return f"{r.status_code}{' without Retry-After' if missing else ''}"
            return await asyncio.gather(*(ask(i) for i in range(requests)))

    start = time.perf_counter()
    statuses = asyncio.run(run())
    result = {"requests": requests, "max_tokens": max_tokens, "wall_s": round(time.perf_counter() - start, 1),
              "statuses": dict(sorted(collections.Counter(statuses).items()))}
    if pid is not None:
        result.update(server_peak_rss_mib_before=before, server_peak_rss_mib_after=peak_rss_mib(pid))
    return result


def peak_rss_mib(pid: int | None) -> float | None:
    """A process's peak resident memory (VmHWM, Linux), in MiB; None without a pid."""
    if pid is None:
        return None
    for line in open(f"/proc/{pid}/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


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
    parser.add_argument("--max-tokens", type=_positive, default=None, help="max_tokens of each request "
                        "(default 64; 2 with --burst)")
    parser.add_argument("--burst", action="store_true", help="send CONCURRENCY short requests at once, no "
                        "retries, and count the answers by status")
    parser.add_argument("--pid", type=int, default=None, help="with --burst: the server's process id, for its "
                        "peak memory")
    parser.add_argument("--stream", action="store_true", help="stream every answer: first-token latency, each "
                        "stream's tokens/s and all streams' tokens/s")
    args = parser.parse_args(argv)
    if args.burst and args.stream:
        parser.error("--burst counts statuses of short requests; --stream times streamed answers: give one")
    if args.burst:
        result = burst(args.url, args.concurrency, args.max_tokens or 2, os.environ.get("POLO_API_KEY"), args.pid)
    elif args.stream:
        result = stream_test(args.url, args.concurrency, args.requests, args.max_tokens or 64,
                             api_key=os.environ.get("POLO_API_KEY"))
    else:
        result = load_test(args.url, args.concurrency, args.requests, args.max_tokens or 64)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
