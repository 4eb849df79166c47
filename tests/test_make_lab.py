"""`make lab` starts JupyterLab as root too (a container, many cloud machines), where Jupyter refuses to
start without --allow-root; other users do not get the flag."""
import os
import subprocess

import pytest

from polo_lib import paths


def lab_command(*variables: str) -> str:
    """The command `make lab` would run (make -n), setup taken as done."""
    done = subprocess.run(["make", "-n", "-o", "setup", "lab", *variables], cwd=paths.PROJ_ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return next(line for line in done.stdout.splitlines() if "jupyter lab" in line)


@pytest.mark.parametrize("user_id,allow_root", [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_as_root(user_id, allow_root):
    assert ("--allow-root" in lab_command(f"USER_ID={user_id}").split()) is allow_root


def test_make_lab_asks_who_runs_it():
    assert ("--allow-root" in lab_command().split()) is (os.getuid() == 0)
