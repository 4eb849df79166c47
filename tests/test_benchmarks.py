"""The training benchmark compares like with like: the three paths (polo_lib, bare Unsloth + TRL,
transformers + PEFT) train the tiny model on the same batches and agree on the loss. If they did
not, a tokens/s ratio between them would mean nothing."""
from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.__main__ import bench_training, machine, markdown
from benchmarks.training import probe


@pytest.mark.slow
def test_three_training_paths_see_the_same_tokens_and_agree_on_the_loss(tiny_model_dir):
    result = bench_training("smoke", {}, repeats=1, warmup=1, steps=2, tolerance=1e-4,
                            paths=["polo", "unsloth_trl", "peft_trainer"], log=lambda *_: None)
    assert result["losses_agree"], result["agreement"]
    for name, a in result["agreement"].items():
        assert a["same_tokens_per_step"], name
        assert a["max_relative_loss_difference"] < 1e-4, name
    assert len(result["tokens_per_step"]) == 3 and min(result["tokens_per_step"]) > 0
    for name, med in result["median"].items():
        assert med["tokens_per_s"] > 0 and 100 < med["peak_rss_mib"] < 8192, name
        assert med["trainable_params"] == result["median"]["polo"]["trainable_params"], name
    assert set(result["ratios"]) == {"polo/unsloth_trl", "polo/peft_trainer"}
    text = markdown({"date": "today", "machine": machine(), "training": result})
    assert "(c) transformers + PEFT" in text and "the comparison is void" not in text


def test_a_loss_mismatch_voids_the_comparison():
    from benchmarks.__main__ import loss_agreement

    assert loss_agreement([2.0, 1.0], [2.0, 1.0]) == 0
    assert loss_agreement([2.0, 1.0], [2.0, 1.05]) == pytest.approx(0.05)


def test_peak_rss_is_the_childs_own_not_the_parents(tmp_path):
    """getrusage's ru_maxrss survives fork + exec on Linux; the probe must not report the parent's."""
    ballast = b"x" * 2 ** 30  # the parent touches 1 GiB more than the child ever will
    code = "from benchmarks.training import memory; print(memory.peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert child < 256 * 2 ** 20  # a bare Python: ~10 MiB
    assert probe.peak_rss_bytes() > 2 ** 30  # the probe's figure is the same function's
    del ballast
