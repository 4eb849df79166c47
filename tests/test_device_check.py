"""The device check (benchmarks/device_check.sh) gets one short try on a GPU machine that has no
network: what can be proven on a CPU is proven here. Repacked wheels must install, the offline
resolver must notice a missing wheel, the model shapes must carry the right config and tokenizer,
the script must refuse a machine it cannot use with a message saying what to do, and a part that
fails or hangs must not lose the results of the others."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest

import benchmarks.__main__ as bench
from benchmarks.device import check, results, shapes, wheels
from benchmarks.training import probe
from polo_lib import metrics, registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


# ------------------------------------------------------------------ wheels

def make_wheel(folder: Path, name: str = "demo_pkg", version: str = "1.0", requires: tuple[str, ...] = ()) -> Path:
    """A small real wheel: a package with a CUDA-ish library, a UI folder and plain modules."""
    di = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{name}/core.py": "def f():\n    return 1\n",
        f"{name}/lib_cuda118.so": "x" * 5000,
        f"{name}/lib_cuda130.so": "y" * 300,
        "studio/frontend/app.js": "z" * 8000,
        f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                          + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{di}/top_level.txt": f"{name}\nstudio\n",
    }
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        rows = []
        for n, text in files.items():
            z.writestr(n, text)
            rows.append(f"{n},{wheels._record_hash(text.encode())},{len(text.encode())}")
        z.writestr(f"{di}/RECORD", "\n".join(rows + [f"{di}/RECORD,,"]) + "\n")
    return path


def test_repacked_wheel_drops_files_keeps_a_true_record_and_installs_offline(tmp_path):
    src = make_wheel(tmp_path)
    drop = lambda n: n.startswith("studio/") or n.endswith("lib_cuda118.so")  # noqa: E731
    out = wheels.repack(src, tmp_path / "out", drop)
    assert sorted(out.dropped) == ["demo_pkg/lib_cuda118.so", "studio/frontend/app.js"]
    assert out.path.name == src.name and out.size_after < out.size_before
    assert wheels.verify_record(out.path) == []
    names = zipfile.ZipFile(out.path).namelist()
    assert "demo_pkg/lib_cuda130.so" in names and not any(n.startswith("studio/") for n in names)

    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                           "--no-deps", "--target", str(target), str(out.path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (target / "demo_pkg" / "lib_cuda130.so").is_file() and not (target / "studio").exists()
    value = subprocess.run([sys.executable, "-c", "import demo_pkg; print(demo_pkg.VALUE)"],
                           env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert value.stdout.strip() == "42"


def test_verify_record_catches_a_wheel_whose_files_changed(tmp_path):
    src = make_wheel(tmp_path)
    bad = tmp_path / "bad" / src.name
    bad.parent.mkdir()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, b"VALUE = 0\n" if info.filename.endswith("__init__.py") else data)
    assert any("hash or size" in p for p in wheels.verify_record(bad))


@pytest.mark.parametrize("name, dropped", [
    ("bitsandbytes/libbitsandbytes_cuda130.so", False),   # torch 2.11 + CUDA 13.x loads this one
    ("bitsandbytes/libbitsandbytes_cpu.so", False),       # the fallback when no GPU is visible
    ("bitsandbytes/libbitsandbytes_cuda128.so", True),
    ("bitsandbytes/libbitsandbytes_rocm72.so", True),
    ("bitsandbytes/nn/modules.py", False),
])
def test_bitsandbytes_keeps_only_its_cuda13_and_cpu_libraries(name, dropped):
    assert wheels.DROP_RULES["bitsandbytes"](name) is dropped


@pytest.mark.parametrize("name, dropped", [
    # every extension module links these (readelf NEEDED), so they stay
    ("pyarrow/libarrow.so.2600", False), ("pyarrow/libparquet.so.2600", False),
    ("pyarrow/libarrow_substrait.so.2600", False), ("pyarrow/libarrow_dataset.so.2600", False),
    ("pyarrow/libarrow_python.so.2600", False), ("pyarrow/lib.cpython-312-x86_64-linux-gnu.so", False),
    ("pyarrow/_parquet.cpython-312-x86_64-linux-gnu.so", False), ("pyarrow/ipc.py", False),
    # Flight, cloud file systems, headers, tests and the duplicate library names go
    ("pyarrow/libarrow_flight.so.2600", True), ("pyarrow/_flight.cpython-312-x86_64-linux-gnu.so", True),
    ("pyarrow/libarrow_s3.so.2600", True), ("pyarrow/_s3fs.cpython-312-x86_64-linux-gnu.so", True),
    ("pyarrow/include/arrow/api.h", True), ("pyarrow/tests/test_table.py", True),
    ("pyarrow/libarrow_python.so", True), ("pyarrow/libarrow.so", True),
])
def test_pyarrow_keeps_what_datasets_links_and_loads(name, dropped):
    assert wheels.DROP_RULES["pyarrow"](name) is dropped


@pytest.mark.slow
def test_carried_unsloth_wheels_still_import(tmp_path):
    """Repacking must not drop what `import unsloth` loads (unsloth_zoo's __init__ imports its
    mlx package on every platform: dropping it broke the import once). Runs where
    benchmarks/device_wheels.sh has filled the folder; CPU import path (no Triton here)."""
    folder = ROOT / "benchmarks" / "device_wheels"
    found = sorted(folder.glob("unsloth-*.whl")) + sorted(folder.glob("unsloth_zoo-*.whl"))
    if len(found) != 2:
        pytest.skip("benchmarks/device_wheels not filled (bash benchmarks/device_wheels.sh)")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--target", str(target), *map(str, found)], check=True, capture_output=True)
    code = ("import unsloth, unsloth_zoo; from unsloth import FastLanguageModel; "
            "from unsloth.chat_templates import train_on_responses_only; print(unsloth.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(target),
                               "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith(str(target))  # the carried copy, not the venv's


def test_offline_resolver_accepts_a_complete_set_and_names_a_missing_wheel(tmp_path):
    """The completeness check of device_wheels.sh: stubs stand for what the device has."""
    stubs, carried, missing = (tmp_path / d for d in ("stubs", "carried", "missing"))
    for d in (stubs, carried, missing):
        d.mkdir()
    wheels.make_stub_wheel(stubs, "torch", "2.11.0")
    constraints = wheels.write_constraints({"torch": "2.11.0"}, tmp_path / "constraints.txt")
    make_wheel(carried, "needs_torch", "1.0", requires=("torch>=2.4", "helper_dep"))
    make_wheel(carried, "helper_dep", "0.1")
    make_wheel(missing, "needs_torch", "1.0", requires=("torch>=2.4", "helper_dep"))

    ok = wheels.resolve(["needs_torch"], stubs, constraints, offline_links=[carried], check=False)
    assert ok.returncode == 0, ok.stderr
    installed = {i["metadata"]["name"] for i in json.loads(ok.stdout)["install"]}
    assert {"needs_torch", "helper_dep", "torch"} <= {n.replace("-", "_") for n in installed}
    bad = wheels.resolve(["needs_torch"], stubs, constraints, offline_links=[missing], check=False)
    assert bad.returncode != 0 and "helper" in (bad.stderr + bad.stdout).lower()


# ------------------------------------------------------------------ model shapes

def _llama_cpp_files(tmp: Path) -> tuple[Path, Path]:
    """Llama 3's vocabulary GGUF and Llama-3.2's chat template, as `make export-tools` (which `make
    test` runs first) unpacks them from the llama-cpp-python sdist into the model cache."""
    from polo_lib.deploy import export

    where = export.converter_dir()
    files = where / export.LLAMA3_VOCAB, where / export.LLAMA32_TEMPLATE
    if not all(f.is_file() for f in files):
        pytest.skip(f"no Llama 3 vocabulary in {where}: run `make export-tools`")
    return files


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


@pytest.fixture(scope="module")
def llama_shape(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    gguf, template = _llama_cpp_files(tmp)
    return shapes.write_llama_shape(tmp / "shape", gguf, template, config_overrides=TINY)


def test_llama_shape_has_the_real_configs_special_fields(llama_shape):
    config = json.loads((llama_shape / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 128256
    assert config["hidden_size"] == 64 and config["num_key_value_heads"] == 2  # the tiny overrides
    rope = config.get("rope_parameters") or {**config.get("rope_scaling", {}), "rope_theta": config.get("rope_theta")}
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0 and rope["rope_theta"] == 500000.0
    assert config["rms_norm_eps"] == 1e-5 and config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (128000, 128009, 128004)
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert (llama_shape / "tokenizer.json.gz").is_file() and not (llama_shape / "tokenizer.json").exists()
    # the real 3B numbers when not overridden
    assert shapes.llama_config().num_hidden_layers == 28 and shapes.llama_config().hidden_size == 3072


def test_llama_tokenizer_round_trips_renders_its_template_and_pads_apart_from_eos(llama_shape, tmp_path):
    from transformers import AutoTokenizer

    from polo_lib import prompts, train

    shapes.copy_shape_files(llama_shape, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 128256
    assert (tok.eos_token, tok.eos_token_id) == ("<|eot_id|>", 128009)
    assert (tok.pad_token, tok.pad_token_id) == ("<|finetune_right_pad_id|>", 128004)
    assert tok.bos_token_id == 128000 and tok("YOLO")["input_ids"][0] == 128000
    text = "YOLO는 이미지를 S x S 격자로 나눈다."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    messages = prompts.build_messages("YOLO divides the image into a grid.") + [
        {"role": "assistant", "content": "쉽게 말하면 격자입니다."}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert rendered.endswith("쉽게 말하면 격자입니다.<|eot_id|>")
    markers = train.derive_markers(tok)  # what train_on_responses_only masks by
    assert markers.response == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_random_model_from_a_shape_runs_and_keeps_the_tokenizer(llama_shape, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = shapes.build_random(llama_shape, tmp_path / "model", dtype="float32", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    logits = model(**tok("hello", return_tensors="pt")).logits
    assert logits.shape[-1] == 128256 and torch.isfinite(logits).all()


# ------------------------------------------------------------------ the script's refusals

def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def test_device_check_refuses_a_python_without_cuda_torch():
    done = run_script(PYTHON=sys.executable)
    assert done.returncode == 3
    assert "no CUDA device is visible" in done.stderr and "--cpu" in done.stderr


def test_device_check_refuses_a_python_without_torch(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    done = run_script(PYTHON=str(fake))
    assert done.returncode == 3 and "has no torch" in done.stderr


def test_device_check_names_the_missing_carry_and_how_to_make_it(tmp_path):
    done = run_script("--cpu", "--install", PYTHON=sys.executable, POLO_DEVICE_WHEELS=str(tmp_path / "nowheels"),
                      POLO_DEVICE_MODELS=str(tmp_path / "nomodels"))
    assert done.returncode == 4
    assert "nowheels" in done.stderr and "nomodels/llama-3.2-3b-instruct" in done.stderr
    assert "benchmarks/device_wheels.sh" in done.stderr


def test_device_check_rejects_an_unknown_argument():
    done = run_script("--gpu-please", PYTHON=sys.executable)
    assert done.returncode == 2 and "unknown argument '--gpu-please'" in done.stderr


# ------------------------------------------------------------------ results survive a bad part

class ScriptedCheck(check.Check):
    """The real part runner and results writer, with short commands standing in for the parts."""

    def __init__(self, args, scripts: dict[str, str]):
        super().__init__(args)
        self.scripts = scripts

    def commands(self, part):
        return [[sys.executable, "-c", self.scripts[part]]]

    def result_of(self, part):
        real = part == "imports" or part.startswith("training-")
        return check.Check.result_of(self, part) if real else None


def test_a_failing_and_a_hanging_part_keep_the_results_of_the_others(tmp_path, monkeypatch):
    monkeypatch.setitem(check.BOXES, "smoke", 3)
    out = tmp_path / "results"
    json_path = out / "t.json"
    scripts = {
        "imports": 'print("RESULT " + \'{"import_unsloth_s": 1.5}\')',
        "models": "import sys; print('building...'); sys.exit(7)",
        # reads the results file while it runs: what the parts before it wrote is on disk already
        "smoke": (f"import json, time; d = json.load(open({str(json_path)!r})); "
                  "print('seen', d['parts']['imports']['status'], d['parts']['models']['status'], flush=True); "
                  "time.sleep(60)"),
    }
    args = argparse.Namespace(cpu=True, work=str(tmp_path / "work"), results=str(out), deadline_s=100.0,
                              models=str(tmp_path))
    parts = ["imports", "models", "smoke", "training-fp32", "generation"]
    res = results.Results(out, "t", parts, {"machine": {"python": "3.12"}, "mode": "cpu"})
    failed = ScriptedCheck(args, scripts).run(parts, res)
    res.close()

    data = json.loads(json_path.read_text())
    p = data["parts"]
    assert failed == 2
    assert p["imports"]["status"] == "ok" and p["imports"]["result"] == {"import_unsloth_s": 1.5}
    assert p["models"]["status"] == "failed" and "exit 7" in p["models"]["error"]
    assert p["smoke"]["status"] == "timeout" and "seen ok failed" in p["smoke"]["error"]
    assert p["smoke"]["seconds"] < 30  # killed at its box, not left to hang
    assert p["training-fp32"]["status"] == "skipped" and "models" in p["training-fp32"]["note"]
    assert data["finished"]
    table = (out / "t.md").read_text()
    assert "| models | failed |" in table and "| smoke | timeout |" in table


def test_a_part_is_skipped_when_the_deadline_leaves_it_too_little(tmp_path):
    args = argparse.Namespace(cpu=True, work=str(tmp_path / "work"), results=str(tmp_path), deadline_s=5.0,
                              models=str(tmp_path))
    res = results.Results(tmp_path, "d", ["imports"], {})
    ScriptedCheck(args, {"imports": "print('never')"}).run(["imports"], res)
    part = json.loads((tmp_path / "d.json").read_text())["parts"]["imports"]
    assert part["status"] == "skipped" and "out of time" in part["note"]


def test_the_json_survives_a_table_that_cannot_be_rendered(tmp_path):
    res = results.Results(tmp_path, "r", ["training-bf16"], {})
    res.finish("training-bf16", "ok", result={"median": "not a table"})  # markdown expects a dict there
    assert json.loads((tmp_path / "r.json").read_text())["parts"]["training-bf16"]["status"] == "ok"
    assert "could not be rendered" in (tmp_path / "r.md").read_text()


# ------------------------------------------------------------------ precision of the bare paths

@pytest.mark.parametrize("capability, asked, expected", [
    ((7, 5), "auto", "float16"),      # T4: fp16, even though torch 2.13 says bf16 is "supported"
    ((8, 6), "auto", "bfloat16"),     # A10G
    ((9, 0), "auto", "bfloat16"),     # H100 / H200
    ((9, 0), "float16", "float16"),   # the fp16 run of the device check
    ((7, 5), "bfloat16", SystemExit),
])
def test_bare_paths_take_bf16_only_from_compute_capability_8(monkeypatch, capability, asked, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch 2.13 says on a T4
    if expected is SystemExit:
        with pytest.raises(SystemExit, match="compute capability 7.5"):
            probe.precision(asked)
    else:
        assert probe.precision(asked) == expected


def test_bare_paths_train_float32_on_a_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe.precision("auto") == "float32"


# ------------------------------------------------------------------ Korean tokens without kiwipiepy

@pytest.fixture
def without_kiwipiepy(monkeypatch):
    """`import kiwipiepy` fails, as on the device (its 84 MiB model is not carried)."""
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)
    metrics.tokens._kiwi.cache_clear()
    metrics.tokens._korean_tokens.cache_clear()
    yield
    metrics.tokens._kiwi.cache_clear()
    metrics.tokens._korean_tokens.cache_clear()


def test_task_metrics_fall_back_to_13a_tokens_without_kiwipiepy_and_say_so(without_kiwipiepy):
    """The smoke part scores task metrics at training's step 0 on the device: without Kiwi they must
    still come out, on sacrebleu 13a tokens, and the record must be able to say so."""
    sources = ["YOLO divides the image into an S x S grid."]
    predictions = ["YOLO는 이미지를 S x S 격자로 나눕니다."]
    references = ["YOLO는 사진을 작은 격자로 나눕니다."]
    with pytest.warns(RuntimeWarning, match="kiwipiepy is not installed.*13a"):
        scores = metrics.during_training(sources, predictions, references, [])
    assert metrics.korean_tokenizer() == "13a"
    assert set(scores) == {m.name for m in registry.during_training()}
    assert scores["sari"] == pytest.approx(metrics.sari(sources, predictions, [references], tokenize="13a"))
    assert metrics.korean_tokens("YOLO는 격자로 나눕니다.") == ["YOLO는", "격자로", "나눕니다", "."]
    with pytest.raises(ImportError, match="tokenize='kiwi' needs kiwipiepy"):  # asked by name: no substitute
        metrics.sari(sources, predictions, [references], tokenize="kiwi")


def test_korean_tokens_are_kiwi_morphemes_when_kiwipiepy_is_there():
    pytest.importorskip("kiwipiepy")
    metrics.tokens._kiwi.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        assert metrics.korean_tokenizer() == "kiwi"
        assert metrics.korean_tokens("격자로 나눕니다")[:2] == ["격자", "로"]


# ------------------------------------------------------------------ budget, order and the clock

def test_the_estimates_fit_the_budget_and_the_budget_leaves_a_minute_to_the_hard_kill():
    """The header's estimates (the same numbers as check.ESTIMATES) add up within the default
    budget less the stop grace; the T4's precision and the 4-bit path come before the optional."""
    header = SCRIPT.read_text().split("# Budget", 1)[1].split("set -uo pipefail", 1)[0]
    listed = dict(re.findall(r"^#   (\S+)\s+~(\d+) s", header, flags=re.M))
    assert {k: int(v) for k, v in listed.items()} == {"setup": check.SETUP_ESTIMATE_S, **check.ESTIMATES}
    planned = [p for p in check.GPU_PARTS if p not in check.IF_TIME_LEFT]
    assert check.SETUP_ESTIMATE_S + sum(check.ESTIMATES[p] for p in planned) <= \
        check.DEFAULT_BUDGET_S - check.STOP_GRACE_S
    assert check.DEFAULT_BUDGET_S <= check.HARD_KILL_S - 60
    assert f"POLO_DEVICE_BUDGET_S:-{check.DEFAULT_BUDGET_S}" in SCRIPT.read_text()
    order = check.GPU_PARTS
    assert order.index("training-fp16") < order.index("generation-135m") < order.index("training-bf16")
    assert order.index("smoke") < order.index("generation")  # smoke trains the tiny Llama in 4-bit
    assert order[-len(check.IF_TIME_LEFT):] == list(check.IF_TIME_LEFT)


def test_stopping_a_part_that_ignores_sigterm_still_ends_by_the_deadline(tmp_path, monkeypatch):
    """A box ends STOP_GRACE_S before the deadline, so SIGTERM's wait and SIGKILL fit inside it (both waits
    shortened here: 2 s and 1 s, where the check waits 10 s and 5 s)."""
    monkeypatch.setattr(check, "MIN_SECONDS", 1)
    monkeypatch.setattr(check, "TERM_WAIT_S", 2)
    monkeypatch.setattr(check, "STOP_GRACE_S", 3)
    deadline_s = check.STOP_GRACE_S + 4
    args = argparse.Namespace(cpu=True, work=str(tmp_path / "work"), results=str(tmp_path), deadline_s=deadline_s,
                              models=str(tmp_path))
    res = results.Results(tmp_path, "g", ["imports"], {})
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
               "time.sleep(120)"
    start = time.monotonic()
    ScriptedCheck(args, {"imports": stubborn}).run(["imports"], res)
    took = time.monotonic() - start
    part = json.loads((tmp_path / "g.json").read_text())["parts"]["imports"]
    assert part["status"] == "timeout" and part["box_seconds"] <= deadline_s - check.STOP_GRACE_S
    assert took <= deadline_s + 1, f"took {took:.1f} s against a {deadline_s} s deadline"


def test_results_go_to_polo_device_results_else_out_else_benchmarks_results(monkeypatch):
    monkeypatch.setenv("POLO_DEVICE_RESULTS", "/r")
    monkeypatch.setenv("OUT", "/o")
    assert check.results_dir() == "/r"
    monkeypatch.delenv("POLO_DEVICE_RESULTS")
    assert check.results_dir() == "/o"
    monkeypatch.delenv("OUT")
    assert check.results_dir() == str(ROOT / "benchmarks" / "results")


def test_time_boxes_from_the_command_line_are_checked():
    assert check.parse_boxes("smoke=5, training-fp32=40", check.CPU_PARTS) == {"smoke": 5.0, "training-fp32": 40.0}
    with pytest.raises(ValueError, match="PART=SECONDS with PART one of"):
        check.parse_boxes("smoek=5", check.CPU_PARTS)
    with pytest.raises(ValueError, match="'soon' is not a number"):
        check.parse_boxes("smoke=soon", check.CPU_PARTS)


def fake_shapes(folder: Path) -> Path:
    for shape in (shapes.SMOLLM2, shapes.LLAMA):
        (folder / shape).mkdir(parents=True)
        (folder / shape / "config.json").write_text("{}")
    return folder


def test_the_script_leaves_its_record_and_logs_in_out_and_starts_its_clock_first(tmp_path):
    """Through device_check.sh as the device runs it, with $OUT set: the record, the table and the
    killed part's log land in $OUT. Every Python start takes 3 s more here (a slow torch import):
    the deadline check.py is given must already have lost them, so the clock started first."""
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nsleep 3\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    out = tmp_path / "out"
    done = run_script("--cpu", PYTHON=str(python), OUT=str(out), POLO_DEVICE_RESULTS="",
                      POLO_DEVICE_MODELS=str(fake_shapes(tmp_path / "shapes")), POLO_DEVICE_WORK=str(tmp_path / "w"),
                      POLO_DEVICE_PARTS="imports", POLO_DEVICE_BOXES="imports=1", POLO_DEVICE_BUDGET_S="100")
    assert done.returncode == 1, done.stdout + done.stderr  # a part timed out
    [record] = out.glob("*-device-cpu.json")
    data = json.loads(record.read_text())
    assert data["parts"]["imports"]["status"] == "timeout" and data["finished"]
    assert record.with_suffix(".md").is_file() and "| imports | timeout |" in record.with_suffix(".md").read_text()
    assert (out / "logs" / "imports.log").read_text().startswith("$ ")
    # two Python starts (the torch probe, check.py) happened before check.py's own clock started
    assert data["deadline"]["seconds_from_check_start"] <= 100 - 6


# ------------------------------------------------------------------ a training part's paths survive

def loss_run(losses: list[float], labels: list[int] | None = None) -> dict:
    """One path's result file as benchmarks/training/probe.py writes it."""
    return {"tokens_per_s": 100.0, "peak_rss_mib": 500.0, "load_seconds": 1.0, "losses": losses,
            "trainable_params": 10, "tokens_per_step": [1492, 1591, 1497],
            "label_tokens": labels or [202, 135, 170]}


HEAD = {"params": "default", "model": "m", "model_path": "m", "dtype": "float32", "batch_size": 1,
        "accumulation": 4, "warmup_steps": 1, "measured_steps": 2, "repeats": 1}
PATHS = ["polo", "unsloth_trl", "peft_trainer"]
# per-step losses measured on this CPU (the tiny Llama body, float32, one seeded random init)
RIGHT = [11.774341583251953, 11.788021087646484, 11.772226333618164]
RIGHT_OTHER = [11.774341583251953, 11.788006782531738, 11.772212982177734]  # (b): 1.21e-6 off (a)
LABELS_ONE_LATE = [11.774630546569824, 11.788375854492188, 11.772475242614746]  # 2.45e-5 off (a)


def test_the_loss_check_tells_right_paths_from_a_path_with_its_masking_broken():
    """At the fp32 tolerance measured here, the right paths agree and a path whose labels start one
    token late (the losses measured with that bug) does not; different labelled tokens void the
    comparison even when the losses happen to agree."""
    tol = check.LOSS_TOLERANCE["fp32"]
    right = bench.summarize_training({"polo": [loss_run(RIGHT)], "unsloth_trl": [loss_run(RIGHT_OTHER)],
                                      "peft_trainer": [loss_run(RIGHT_OTHER)]}, PATHS, tol, HEAD)
    assert right["losses_agree"] and right["complete"]
    broken = bench.summarize_training({"polo": [loss_run(RIGHT)], "unsloth_trl": [loss_run(RIGHT_OTHER)],
                                       "peft_trainer": [loss_run(LABELS_ONE_LATE)]}, PATHS, tol, HEAD)
    assert not broken["losses_agree"]
    assert broken["agreement"]["peft_trainer"]["max_relative_loss_difference"] > tol
    masked_apart = bench.summarize_training({"polo": [loss_run(RIGHT)], "unsloth_trl": [loss_run(RIGHT)],
                                             "peft_trainer": [loss_run(RIGHT, labels=[203, 135, 170])]},
                                            PATHS, tol, HEAD)
    assert not masked_apart["losses_agree"] and not masked_apart["agreement"]["peft_trainer"]["same_label_tokens"]
    alone = bench.summarize_training({"polo": [loss_run(RIGHT)], "unsloth_trl": [], "peft_trainer": []},
                                     PATHS, tol, HEAD)
    assert alone["paths_done"] == ["polo"] and not alone["complete"] and not alone["losses_agree"]


def write_stand_in_paths(folder: Path, second: str) -> Path:
    """Stand-ins for the training scripts: (a) prints and writes its result, (b) runs `second`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "polo.py").write_text(
        "import json, sys\nprint('stand-in polo trains', flush=True)\n"
        f"open(sys.argv[2], 'w').write(json.dumps({loss_run(RIGHT)!r}))\n")
    (folder / "unsloth_trl.py").write_text(second)
    return folder


def test_the_training_bench_writes_each_paths_figures_the_moment_it_ends(tmp_path, monkeypatch, capfd,
                                                                       tiny_model_dir):
    """(a) ends, (b) dies: the JSON and the table already hold (a)'s figures, marked incomplete,
    and (a)'s output came through as it ran (the device check's part log keeps it)."""
    monkeypatch.setattr(bench, "TRAINING_DIR", write_stand_in_paths(
        tmp_path / "paths", "import sys\nprint('stand-in unsloth_trl breaks', flush=True)\nsys.exit(3)\n"))
    with pytest.raises(RuntimeError, match="(?s)unsloth_trl failed \\(exit 3\\).*stand-in unsloth_trl breaks"):
        bench.main(["training", "--params", "smoke", "--repeats", "1", "--warmup-steps", "1", "--steps", "2",
                    "--paths", "polo,unsloth_trl", "--results-dir", str(tmp_path / "r"), "--out", "t"])
    assert "stand-in polo trains" in capfd.readouterr().out
    training = json.loads((tmp_path / "r" / "t.json").read_text())["training"]
    assert training["paths_done"] == ["polo"] and not training["complete"]
    assert training["all_runs"]["polo"][0]["losses"] == RIGHT
    assert "**Incomplete**: only polo finished" in (tmp_path / "r" / "t.md").read_text()


def test_a_training_part_killed_at_its_box_keeps_the_paths_before_it(tmp_path):
    """The part's file holds (a) when the box kills the part during (b): the record keeps (a)."""
    out = tmp_path / "results"
    part_file = out / "logs" / "parts" / "training-fp32.json"
    summary = bench.summarize_training({"polo": [loss_run(RIGHT)], "unsloth_trl": [], "peft_trainer": []},
                                       PATHS, 5e-6, HEAD)
    script = (f"import json, time; open({str(part_file)!r}, 'w').write(json.dumps({{'training': {summary!r}}})); "
              "print('[training] repeat 1/1: unsloth_trl ...', flush=True); time.sleep(60)")
    args = argparse.Namespace(cpu=True, work=str(tmp_path / "work"), results=str(out), deadline_s=100.0,
                              models=str(tmp_path), boxes={"training-fp32": 3})
    res = results.Results(out, "k", ["training-fp32"], {"mode": "cpu"})
    ScriptedCheck(args, {"training-fp32": script}).run(["training-fp32"], res)
    part = json.loads((out / "k.json").read_text())["parts"]["training-fp32"]
    assert part["status"] == "timeout" and part["seconds"] < 20
    assert part["result"]["paths_done"] == ["polo"] and part["result"]["losses"] == {"polo": RIGHT}
    assert "unsloth_trl ..." in (out / "logs" / "training-fp32.log").read_text()  # unbuffered, kept
    table = (out / "k.md").read_text()
    assert "| fp32 | polo | 100.0 |" in table and "1 of 3 paths finished" in table


@pytest.mark.slow
def test_cpu_rehearsal_stopped_mid_training_leaves_the_finished_paths_in_out(tmp_path, llama_shape):
    """`device_check.sh --cpu` as the device runs it, with a fake $OUT, stopped from outside (the
    device tool's kill) once the first training path has ended: its figures are in $OUT, in the
    part's own file and in the record, with the part marked interrupted (about 45 s here). It runs the
    training part alone, on the random model the models part would build, built here as that part builds
    it (two Python starts fewer); the imports part, which nothing here asserts, would only add a Python
    start importing the whole stack."""
    from benchmarks.device.check import TINY_LLAMA_SHAPE

    models, work = tmp_path / "shapes", tmp_path / "w"
    shapes.write_smollm2_shape(models / shapes.SMOLLM2)
    shapes.copy_shape_files(llama_shape, models / shapes.LLAMA)
    (models / shapes.LLAMA / "config.json").write_text((llama_shape / "config.json").read_text())
    shapes.build_random(models / shapes.LLAMA, work / "random" / shapes.LLAMA, dtype="float32", device="cpu",
                        overrides=TINY_LLAMA_SHAPE)
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(out),
           "POLO_DEVICE_RESULTS": "", "POLO_DEVICE_MODELS": str(models), "POLO_DEVICE_WORK": str(work),
           "POLO_DEVICE_PARTS": "training-fp32"}
    proc = subprocess.Popen(["bash", str(SCRIPT), "--cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    part_file = out / "logs" / "parts" / "training-fp32.json"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if part_file.is_file() and json.loads(part_file.read_text())["training"].get("paths_done"):
                break
            time.sleep(1)
        assert proc.poll() is None, f"the check ended before a path did:\n{proc.stdout.read().decode()[-3000:]}"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        [record] = out.glob("*-device-cpu.json")
        for _ in range(60):  # check.py (not the script) writes the last word, within STOP_GRACE_S
            data = json.loads(record.read_text())
            if data["finished"]:
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    part = data["parts"]["training-fp32"]
    assert part["status"] == "interrupted", part
    done = part["result"]["paths_done"]
    assert done and done == json.loads(part_file.read_text())["training"]["paths_done"]
    assert all(len(part["result"]["losses"][p]) == 3 for p in done)  # 1 warm-up + 2 measured steps
    assert (out / record.with_suffix(".md").name).is_file()
    assert "[training] repeat 1/1: polo ..." in (out / "logs" / "training-fp32.log").read_text()
