"""`make test` runs test files on parallel workers; each gets its share of the cores (conftest)."""
import os

import pytest
import torch


def test_a_parallel_worker_uses_its_share_of_the_cores_and_passes_it_on():
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers == 1:
        pytest.skip("not on parallel workers (run through `make test` or pytest -n 2)")
    share = max(1, (os.cpu_count() or 1) // workers)
    assert torch.get_num_threads() == share
    assert os.environ["OMP_NUM_THREADS"] == str(share)  # what kernels and `polo` subprocesses inherit
