"""`make setup` builds .venv with a Python from 3.10 to 3.13, says which, and refuses an older one."""
import subprocess
import sys

import pytest

from polo_lib import paths

SCRIPT = paths.PROJ_ROOT / "requirements" / "find-python.sh"


def fake_python(folder, name, version):
    """An executable that answers the version question as that Python would."""
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


def find(candidates):
    return subprocess.run(["sh", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "PYTHON": " ".join(candidates)},
                          capture_output=True, text=True)


def test_this_python_is_found_and_named():
    done = find([sys.executable])
    assert done.returncode == 0 and done.stdout.strip() == sys.executable
    assert f"using {sys.executable} (Python {sys.version_info.major}.{sys.version_info.minor})" in done.stderr


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_the_first_supported_version_is_taken_after_an_older_one(tmp_path, version):
    old, new = fake_python(tmp_path, "python3.9", "3.9"), fake_python(tmp_path, f"python{version}", version)
    done = find([old, new])
    assert done.returncode == 0 and done.stdout.strip() == new


@pytest.mark.parametrize("version", ["3.9", "3.8", "3.14"])
def test_an_unsupported_python_is_refused_naming_it_and_the_fix(tmp_path, version):
    only = fake_python(tmp_path, f"python{version}", version)
    done = find([only, str(tmp_path / "python-not-there")])
    assert done.returncode == 1 and not done.stdout
    assert f"no Python 3.10 to 3.13 found (found: {only} (Python {version}))" in done.stderr
    assert "PYTHON=/path/to/python3.11 make setup" in done.stderr
