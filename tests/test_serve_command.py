"""`polo serve` as a user starts it, in its own process: the API key from the environment, a crowd
of 2,000 requests against a queue of 256, the key in no log or run file, SIGINT stops it."""
from __future__ import annotations

import json

import httpx
import pytest
from adapter_runs import PARAGRAPH, free_port

from polo_lib import prompts
from polo_lib.unsloth_first import CPU_BANNER

pytestmark = pytest.mark.slow


def test_polo_serve_command_serves_a_run_until_stopped(tiny_run, tmp_path, capsys):
    """The user's command: `polo serve <run>` in its own process, its API key from POLO_API_KEY,
    answers; 2,000 requests at once with a queue of 256 each get 200 or 503 while the server stays
    up within a memory bound; the key is in no log or run file; SIGINT stops it. Its log has no
    Unsloth "training on CPU" banner (the chat, explain and export commands import Unsloth the same way)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from benchmarks import serve_load

    port, key = free_port(), "polo-env-key-c0ffee"
    env = {**os.environ, "POLO_OUTPUTS": str(tiny_run.path.parent.parent), "POLO_API_KEY": key}
    polo = Path(sys.executable).parent / "polo"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(polo), "serve", tiny_run.id, "--port", str(port), "--max-queue", "256"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "polo serve did not come up in 120 s"
            time.sleep(0.5)
        ask = {"messages": prompts.build_messages(PARAGRAPH), "max_tokens": 6}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json=ask,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["model"] == f"polo-easy-{tiny_run.id}"
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=ask).status_code == 401
        # a crowd: every request gets 200 or 503 (none dropped), and the server's memory stays bounded
        load = serve_load.burst(f"http://127.0.0.1:{port}", 2000, max_tokens=2, api_key=key, pid=proc.pid)
        print(json.dumps(load))  # the figures, for the note (pytest -s)
        assert set(load["statuses"]) == {"200", "503"} and sum(load["statuses"].values()) == 2000, load
        assert load["statuses"]["200"] >= 256, load
        assert load["server_peak_rss_mib_after"] - load["server_peak_rss_mib_before"] < 300, load
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["waiting"] == 0 and health["rejected_busy"] == load["statuses"]["503"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    served = (tmp_path / "serve.log").read_text()
    assert f"serving run {tiny_run.id}" in served and "API key required" in served
    assert CPU_BANNER not in served  # nothing trains here: no "training on CPU" (cli._unsloth_first)
    assert not [p for p in tiny_run.path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert key not in served
