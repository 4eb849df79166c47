"""Running a notebook does not change the repository: git stores notebooks stripped (nbstripout as the
clean filter that `make setup` installs), and a run's manifest is not marked dirty by outputs alone.

Each test works in a git repository of its own holding the project's notebooks, never in this checkout
(whose git config other checkouts may share)."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from polo_lib import params, paths, runs

NOTEBOOK = "notebooks/train.ipynb"


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A repository with this project's notebooks and .gitattributes committed, the filter installed
    as `make setup` installs it."""
    root = tmp_path / "repo"
    shutil.copytree(paths.NOTEBOOKS_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in (".gitattributes", ".gitignore"):
        shutil.copy(paths.PROJ_ROOT / name, root)
    (root / "train.py").write_text("lr = 2e-4\n")
    for path in root.rglob("*"):  # older than the index: else git re-reads ("racy git") every file through the filter
        os.utime(path, (time.time() - 60, time.time() - 60))
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "project")
    assert runs.install_notebook_filter(root)
    return root


def executed(path) -> nbformat.NotebookNode:
    """The notebook at `path` as JupyterLab has it after Run All: outputs and counts in every code cell
    (text, a table, a PNG), per-cell timing and scroll state, the running kernel's kernelspec (the venv's,
    which `make setup` installs) and its full language_info."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    nb = nbformat.read(path, as_version=4)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8).decode()
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text="step 3/13 loss 1.42\n" * 20),
            nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
            nbformat.v4.new_output("execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>",
                                                           "text/plain": "   a\n0  1"}, execution_count=count),
        ]
        cell.metadata.update(scrolled=True, execution={"iopub.execute_input": "2026-12-07T08:00:00.000Z",
                                                       "shell.execute_reply": "2026-12-07T08:00:01.000Z"})
    spec = KernelSpecManager().get_kernel_spec("python3")
    nb.metadata.kernelspec = {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    nb.metadata.language_info = dict(IPythonKernel.language_info)
    return nb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter(repo, tmp_path):
    """A Jupyter server from this venv serving `repo`, with the config `make setup` installs (here in a
    config folder of its own): (base URL, token). Stopped after the test."""
    config, port, token = tmp_path / "jupyter-config", free_port(), "polo-test"
    runs.install_jupyter_hook(config)
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(config), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-home"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
                               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                               *(["--allow-root"] if os.getuid() == 0 else [])],
                              cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "jupyter.log").read_text()
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def save_through(jupyter, path: str, nb: nbformat.NotebookNode) -> None:
    """Save `nb` as JupyterLab saves a notebook: a PUT of the contents API."""
    url, token = jupyter
    body = json.dumps({"type": "notebook", "format": "json", "content": nb}).encode()
    request = urllib.request.Request(f"{url}/api/contents/{path}", data=body, method="PUT",
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def test_a_notebook_saved_by_jupyter_with_its_outputs_leaves_git_status_clean(repo, jupyter):
    save_through(jupyter, NOTEBOOK, executed(repo / NOTEBOOK))
    assert len((repo / NOTEBOOK).read_bytes()) > 2 * len(git(repo, "show", f"HEAD:{NOTEBOOK}"))  # outputs on disk
    assert git(repo, "status", "--porcelain") == "", "outputs and front-end metadata should not count as a change"
    assert git(repo, "diff", "--cached", "--stat") == ""  # nothing staged: the index holds the stripped notebook

    # a real change saved the same way stays a change, and is not staged behind the user's back
    nb = executed(repo / NOTEBOOK)
    next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source += "\nepochs = 9"
    save_through(jupyter, NOTEBOOK, nb)
    assert git(repo, "status", "--porcelain").split() == ["M", NOTEBOOK]
    assert git(repo, "diff", "--cached", "--stat") == ""


def test_a_run_after_a_notebook_ran_in_place_is_not_dirty(repo, monkeypatch):
    """Written by anything (papermill in place, an editor), even in a clone whose config lacks the filter:
    the next run's manifest says not dirty; a commit would store the notebook without outputs."""
    git(repo, "config", "--unset", "filter.nbstripout.clean")
    nbformat.write(executed(repo / NOTEBOOK), repo / NOTEBOOK)
    assert git(repo, "status", "--porcelain").split() == ["M", NOTEBOOK]  # git alone sees a change
    monkeypatch.setattr(paths, "PROJ_ROOT", repo)  # the manifest records the repository the code runs from
    manifest = runs.open_run(params.load("smoke")).manifest()
    assert manifest["git"] == {"commit": git(repo, "rev-parse", "HEAD").strip(), "dirty": False}

    assert runs.install_notebook_filter(repo)
    git(repo, "add", NOTEBOOK)
    assert git(repo, "status", "--porcelain") == ""


def test_a_changed_cell_still_makes_the_run_dirty(repo):
    nb = executed(repo / NOTEBOOK)
    next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source += "\nepochs = 9"
    nbformat.write(nb, repo / NOTEBOOK)
    assert runs.git_state(repo)["dirty"] is True


def test_a_changed_file_makes_the_run_dirty_staged_or_not(repo):
    (repo / "train.py").write_text("lr = 3e-4\n")
    assert runs.git_state(repo)["dirty"] is True
    git(repo, "add", "train.py")
    assert runs.git_state(repo)["dirty"] is True
    assert runs.git_state(repo / "notebooks")["commit"] is not None  # from a folder inside the checkout too
    assert runs.git_state(repo.parent) == {"commit": None, "dirty": None}  # outside any checkout


def test_committed_notebooks_are_what_the_filter_makes_of_them():
    """Otherwise git shows a notebook changed the first time it is saved with nothing changed (Jupyter
    writes the filter's canonical form). The filter itself, once over every notebook (a Python start each
    costs seconds): its outputs, one after another, are the notebooks as they are."""
    notebooks = sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb"))
    stripped = subprocess.run(f"{runs.notebook_filter()} --textconv {' '.join(map(str, notebooks))}", shell=True,
                              capture_output=True, text=True, timeout=120, check=True).stdout
    texts = {path.name: path.read_text(encoding="utf-8") for path in notebooks}
    assert stripped == "".join(texts.values()), \
        f"not in the filter's form: {[name for name, text in texts.items() if text not in stripped]}; commit " \
        "them through it: `make setup`, then `git add --renormalize notebooks`"
