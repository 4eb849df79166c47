"""The device check (benchmarks/device_check.sh) gets one short try on a GPU machine that has no
network: what can be proven on a CPU is proven here. Repacked wheels must install, the offline
resolver must notice a missing wheel, the model shapes must carry the right config and tokenizer,
the script must refuse a machine it cannot use with a message saying what to do, and a part that
fails or hangs must not lose the results of the others."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.device import check, results, shapes, wheels
from benchmarks.training import probe

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
        return check.Check.result_of(self, part) if part == "imports" else None


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
