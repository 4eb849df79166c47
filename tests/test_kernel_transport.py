"""`polo run` starts each stage's kernel over IPC: nothing listens on TCP, and the kernel's
"running over TCP without encryption" warning never reaches the user's terminal."""
import nbformat
import papermill as pm

from polo_lib import pipeline

WARNING = "Kernel is running over TCP without encryption"


def run_notebook(tmp_path, **kwargs):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.getpid())")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        progress_bar=False, **kwargs)
    return nbformat.read(tmp_path / "out.ipynb", as_version=4)


def test_the_stage_kernel_runs_over_ipc_and_stays_quiet(tmp_path, capfd):
    out = run_notebook(tmp_path, kernel_manager_class=pipeline.local_kernel_manager())
    assert out.cells[0].outputs[0]["text"].strip().isdigit()  # the kernel ran the cell
    assert WARNING not in capfd.readouterr().err


def test_the_default_tcp_kernel_would_print_the_warning(tmp_path, capfd):
    """What the test above guards against: without it, the warning is in the terminal."""
    run_notebook(tmp_path)
    assert WARNING in capfd.readouterr().err
