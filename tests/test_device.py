"""The GPU path's decisions as tables: no GPU is needed to know what a T4 or an H100 will run.

Every device-dependent choice (precision, 4-bit, optimizer, checkpointing, refusals) is
`device.decide`, a pure function of a described device and the params; the evaluation
schedule is `train.plan`, a pure function of the training params and the data size.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from polo_lib import data, device, params, paths, preflight, runs, train
from polo_lib.device import Device
from polo_lib.errors import ModelError, ParamsError

GiB = 1024 ** 3


def gpu(name: str, cc: tuple[int, int], memory_gib: float, bnb: bool = True) -> Device:
    return Device("cuda", name, int(memory_gib * GiB), int(memory_gib * GiB), compute_capability=cc, bitsandbytes=bnb)


T4 = gpu("Tesla T4", (7, 5), 15)
A10G = gpu("NVIDIA A10G", (8, 6), 22)
RTX_4090 = gpu("NVIDIA GeForce RTX 4090", (8, 9), 24)
H100 = gpu("NVIDIA H100 80GB HBM3", (9, 0), 80)
H200 = gpu("NVIDIA H200", (9, 0), 139)
CPU = Device("cpu", "x86_64", 24 * GiB, 20 * GiB, threads=2)  # no bitsandbytes
CPU_NF4 = Device("cpu", "x86_64 AVX-512", 24 * GiB, 20 * GiB, bitsandbytes=True, threads=2, nf4=True)
CPU_NO_KERNEL = Device("cpu", "old x86_64", 24 * GiB, 20 * GiB, bitsandbytes=True, threads=2, nf4=False)


def decide(dev: Device, params_file: str = "default", **overrides):
    cfg = params.load(params_file, overrides=overrides)
    return device.decide(dev, cfg.model, cfg.lora, cfg.training)


# device, dtype, 4-bit, optimizer, gradient checkpointing, fp16, bf16
GPU_TABLE = [
    (T4, "float16", True, "adamw_8bit", "unsloth", True, False),
    (A10G, "bfloat16", True, "adamw_8bit", "unsloth", False, True),
    (RTX_4090, "bfloat16", True, "adamw_8bit", "unsloth", False, True),
    (H100, "bfloat16", True, "adamw_8bit", "unsloth", False, True),
    (H200, "bfloat16", True, "adamw_8bit", "unsloth", False, True),
]


@pytest.mark.parametrize("dev, dtype, four_bit, optim, checkpointing, fp16, bf16", GPU_TABLE,
                         ids=[row[0].name for row in GPU_TABLE])
def test_the_seed_recipe_on_each_gpu(dev, dtype, four_bit, optim, checkpointing, fp16, bf16):
    d = decide(dev)
    assert (d.dtype, d.load_in_4bit, d.optim, d.gradient_checkpointing, d.fp16, d.bf16, d.use_cpu) == \
        (dtype, four_bit, optim, checkpointing, fp16, bf16, False)
    assert d.notes == ()


def test_bf16_only_from_compute_capability_8_never_emulated():
    """torch 2.13's is_bf16_supported() says True on a T4 (it counts emulation); we do not."""
    assert not T4.bf16 and A10G.bf16 and H200.bf16 and not CPU.bf16
    assert gpu("V100", (7, 0), 16).bf16 is False
    with pytest.raises(ModelError, match=r"bfloat16 asked, but Tesla T4 \(compute capability 7.5\) has no bf16"):
        decide(T4, dtype="bfloat16")
    assert decide(A10G, dtype="float16").dtype == "float16"  # asked explicitly: honoured


def test_cuda_without_bitsandbytes_says_what_to_install():
    no_bnb = gpu("Tesla T4", (7, 5), 15, bnb=False)
    with pytest.raises(ModelError, match=r"bitsandbytes.*pip install -r requirements/gpu.txt"):
        decide(no_bnb)
    d = decide(no_bnb, load_in_4bit=False)  # 16-bit LoRA works without it, with torch's AdamW
    assert (d.load_in_4bit, d.optim, d.dtype) == (False, "adamw_torch", "float16")
    with pytest.raises(ModelError, match="adamw_8bit' is a bitsandbytes optimizer, but bitsandbytes is not installed"):
        decide(no_bnb, load_in_4bit=False, optim="adamw_8bit")


def test_a_gpu_recipe_on_a_cpu_stops_naming_the_params_to_use():
    with pytest.raises(ModelError, match="no CUDA GPU.*params_file 'cpu'.*require_gpu: false"):
        decide(CPU)
    d = decide(CPU_NF4, require_gpu=False)  # asked for: it runs, in 4-bit where bitsandbytes' CPU NF4 works
    assert (d.dtype, d.load_in_4bit, d.optim, d.gradient_checkpointing, d.use_cpu, d.notes) == \
        ("float32", True, "adamw_torch_fused", True, True, ())


# a CPU: 4-bit where bitsandbytes' CPU backend runs NF4, else 16-bit with the reason in a note
CPU_TABLE = [
    (CPU_NF4, True, None),
    (CPU, False, r"bitsandbytes is not installed \(make setup installs the pinned one"),
    (CPU_NO_KERNEL, False, r"bitsandbytes' CPU backend failed Unsloth's NF4 forward/backward check on this CPU "
                           r"\(old x86_64"),
]


@pytest.mark.parametrize("dev, four_bit, why", CPU_TABLE, ids=["nf4", "no-bitsandbytes", "no-kernel"])
def test_4bit_on_a_cpu_wherever_bitsandbytes_nf4_runs(dev, four_bit, why):
    d = decide(dev, "cpu", load_in_4bit=True)
    assert (d.load_in_4bit, d.dtype, d.optim, d.use_cpu) == (four_bit, "float32", "adamw_torch_fused", True)
    assert d.precision == ("4-bit NF4 + float32" if four_bit else "float32")
    if why is None:
        assert d.notes == ()
    else:
        assert len(d.notes) == 1 and re.search(f"load_in_4bit was asked, but {why}.*: loading float32 weights",
                                               d.notes[0]), d.notes


def test_unsloths_switch_is_named_when_it_turns_cpu_4bit_off(monkeypatch):
    monkeypatch.setenv(device.CPU_4BIT_SWITCH, "0")
    assert "UNSLOTH_CPU_LOAD_IN_4BIT=0 turns Unsloth's CPU 4-bit path off" in device.no_nf4_reason(CPU_NO_KERNEL)


def test_this_machine_runs_nf4_as_setup_installs_it():
    """make setup pins bitsandbytes, and this project's machines (x86_64 with AVX-512) pass Unsloth's
    NF4 probe: the describe() that every run's manifest records says so, and cpu_qlora trains 4-bit."""
    assert device.bitsandbytes_importable(), "make setup installs bitsandbytes (requirements/constraints.txt)"
    here = device.describe()
    assert here.nf4 is True and here.bitsandbytes is True
    d = device.decide_for(params.load("cpu_qlora"), here)
    assert d.load_in_4bit and d.notes == ()


def test_the_cpu_demo_and_smoke_recipes_on_a_cpu():
    for name in ("cpu", "smoke"):
        d = decide(CPU, name)
        assert (d.dtype, d.load_in_4bit, d.optim, d.gradient_checkpointing, d.fp16, d.bf16, d.use_cpu) == \
            ("float32", False, "adamw_torch_fused", False, False, False, True)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        decide(CPU, "cpu", optim="adamw_8bit")
    d = decide(CPU_NF4, "cpu_qlora")  # the QLoRA shape on a CPU: cpu.yaml but NF4
    assert (d.dtype, d.load_in_4bit, d.optim, d.gradient_checkpointing, d.use_cpu) == \
        ("float32", True, "adamw_torch_fused", False, True)


def test_the_cpu_recipe_on_a_gpu_uses_the_gpu():
    d = decide(T4, "cpu")  # cpu.yaml says float32 and no 4-bit: honoured, on the GPU
    assert (d.dtype, d.load_in_4bit, d.use_cpu, d.optim) == ("float32", False, False, "adamw_8bit")


def test_device_dict_round_trip_keeps_what_the_decisions_need():
    for dev in (T4, H200, CPU, CPU_NF4, CPU_NO_KERNEL):
        again = Device.from_dict(json.loads(json.dumps(dev.as_dict())))
        assert again == dev and again.bf16 == dev.bf16 and again.nf4 == dev.nf4
    assert T4.as_dict()["compute_capability"] == "7.5" and T4.as_dict()["bf16"] is False
    # a manifest written before nf4 was recorded: CUDA with bitsandbytes runs NF4, a CPU is not assumed to
    old = {k: v for k, v in T4.as_dict().items() if k != "nf4"}
    assert Device.from_dict(old).nf4 is True
    assert Device.from_dict({k: v for k, v in CPU_NF4.as_dict().items() if k != "nf4"}).nf4 is False


def test_this_machine_is_described_without_cuda_and_auto_picks_cpu():
    here = device.describe()
    assert here.kind == "cpu" and here.memory_total > 0 and here.compute_capability is None
    assert device.auto_params_name("cuda") == "default" and device.auto_params_name("cpu") == "cpu"
    cfg = params.load("auto")
    assert cfg.name == "cpu" and "no CUDA GPU" in cfg.chosen_by
    assert cfg.short_hash() == params.load("cpu").short_hash()  # the same experiment as naming it


def test_the_manifest_records_the_decisions_and_a_gpu_recipe_makes_no_run_folder(isolated_outputs):
    run = runs.open_run(params.load("smoke"))
    manifest = run.manifest()
    assert manifest["decisions"]["dtype"] == "float32" and manifest["decisions"]["optim"] == "adamw_torch_fused"
    assert manifest["device"]["bf16"] is False and manifest["device"]["device"] == "cpu"
    before = sorted(p.name for p in run.path.parent.iterdir())
    with pytest.raises(ModelError, match="GPU recipe"):
        runs.open_run(params.load("default"))
    assert sorted(p.name for p in run.path.parent.iterdir()) == before


# ------------------------------------------------------------------ the evaluation plan

def train_examples(cfg) -> int:
    """Training paragraphs of the real data for these params (no tokenizer: lengths do not drop any)."""
    return data.split_sizes(cfg.data)["train"]


@pytest.mark.parametrize("name, steps, total, eval_at", [
    ("default", 13, 65, [13, 26, 39, 52, 65]),   # once per epoch: patience 3 can act
    ("cpu", 13, 13, [2, 4, 6, 8, 10, 12]),       # auto: ~10 in one epoch; patience 2 needs 4
    ("cpu_qlora", 13, 13, [2, 4, 6, 8, 10, 12]), # cpu.yaml in NF4: the same schedule
    ("smoke", 26, 6, [3, 6]),                    # max_steps 6, early stopping off
])
def test_the_evaluation_schedule_of_each_params_file(name, steps, total, eval_at):
    cfg = params.load(name)
    p = train.plan(cfg.training, train_examples(cfg)).check()
    assert (p.steps_per_epoch, p.total_steps, p.eval_at) == (steps, total, eval_at)
    assert p.save_steps == p.eval_steps


@pytest.mark.parametrize("asked, total, steps", [
    (0.1, 4, 0),     # a short run: transformers' ceil(0.4) = 1 step would train at learning rate 0
    (0.1, 13, 0),    # the cpu demo's run
    (3, 19, 0),      # steps asked, still under 20
    (0.1, 20, 2),
    (0.05, 65, 3),   # default: rounded down (transformers: ceil(3.25) = 4)
    (0.0, 100, 0),
    (10, 65, 10),    # a whole number is steps
    (500, 65, 65),   # never more than the run
])
def test_warmup_is_resolved_to_steps_and_short_runs_use_every_step(asked, total, steps):
    assert train.resolve_warmup(asked, total) == steps


def test_the_plan_shows_warmup_and_warns_when_it_is_a_quarter_of_the_run():
    cpu = train.plan(params.load("cpu").training, 52)
    assert cpu.warmup_steps == 0 and cpu.warnings() == []
    assert cpu.table().loc["warmup steps", "value"].startswith("0 (asked 0.1; a run under 20 steps")
    long = train.plan(params.load("default", overrides={"warmup_steps": 0.3}).training, 52)
    assert long.warmup_steps == 19 and "19 of 65 steps" in long.warnings()[0]
    assert train.plan(params.load("default").training, 52).warnings() == []


def test_auto_and_epoch_cadence():
    cfg = params.load("default", overrides={"eval_steps": "auto", "save_steps": "auto"})
    assert train.plan(cfg.training, 52).eval_steps == 7          # ~10 evaluations over 65 steps
    cfg = params.load("default", overrides={"eval_steps": "auto", "save_steps": "auto", "epochs": 50})
    assert train.plan(cfg.training, 52).eval_steps == 13         # at least once per epoch


def test_a_schedule_that_cannot_evaluate_or_stop_early_is_refused_with_the_numbers():
    never = params.load("default", overrides={"eval_steps": 100, "save_steps": 100})
    with pytest.raises(ParamsError, match=r"eval_steps \(100\) is more than the 65 steps.*13 steps per epoch"):
        train.plan(never.training, 52).check()
    few = params.load("default", overrides={"eval_steps": 30, "save_steps": 30})
    with pytest.raises(ParamsError, match=r"patience 3\) needs at least 5 evaluations.*gives 2"):
        train.plan(few.training, 52).check()
    off = params.load("default", overrides={"eval_steps": 30, "save_steps": 30, "early_stopping_patience": 0})
    assert train.plan(off.training, 52).check().evaluations == 2


def quick_look(name, **overrides):
    """The plan of `name` with values set on top, as the notebook's parameters cell or --set set them."""
    cfg = params.load(name, overrides=overrides)
    return train.plan(cfg.training, train_examples(cfg), cfg.overridden)


def test_a_quick_look_with_the_cpu_demo_needs_no_more_than_max_steps():
    """max_steps 6 in the parameters cell: auto evaluates every step, enough for patience 2."""
    six = quick_look("cpu", max_steps=6).check()
    assert (six.eval_at, six.save_steps, six.patience, six.notes) == ([1, 2, 3, 4, 5, 6], 1, 2, ())
    assert six.table().loc["early stopping", "value"] == "patience 2"


def test_a_run_too_short_for_the_files_patience_trains_without_early_stopping_and_says_so():
    two = quick_look("cpu", max_steps=2).check()
    assert (two.eval_at, two.patience, two.patience_asked) == ([1, 2], 0, 2)
    assert two.notes == ("early stopping off for this run: patience 2 (the params file's) needs at least 4 "
                         "evaluations to act, and max_steps 2 with eval_steps 1 gives 2. All 2 steps train and "
                         "the last step's adapter is kept; for early stopping, train longer.",)
    assert two.warnings() == list(two.notes)  # the preflight's warnings
    table = two.table()
    assert table.loc["early stopping", "value"].startswith("off for this run (patience 2 asked")
    assert table.loc["note", "value"] == two.notes[0]
    assert two.record()["early_stopping_patience"] == 0 and two.record()["notes"] == list(two.notes)
    # the same values from a params file alone (nothing set on top): the file is wrong, refused
    cfg = params.load("cpu", max_steps=2)
    with pytest.raises(ParamsError, match=r"patience 2\) needs at least 4 evaluations.*gives 2"):
        train.plan(cfg.training, train_examples(cfg)).check()


def test_a_files_cadence_longer_than_the_run_asked_for_becomes_auto():
    """smoke evaluates every 3 of its 6 steps; `-p max_steps 2` would never evaluate."""
    two = quick_look("smoke", max_steps=2).check()
    assert (two.eval_at, two.save_steps) == ([1, 2], 1)
    assert [n.split(":")[0] for n in two.notes] == [
        "training.eval_steps 3 (the params file's) is more than the 2 steps asked for (max_steps 2)",
        "training.save_steps 3 (the params file's) is more than the 2 steps asked for (max_steps 2)"]


@pytest.mark.parametrize("name, overrides, refusal", [
    ("cpu", {"max_steps": 6, "eval_steps": 3, "save_steps": 3},
     r"patience 2\) needs at least 4 evaluations to act, but eval_steps 3 over 6 steps gives 2"),
    ("cpu", {"max_steps": 2, "early_stopping_patience": 2}, r"patience 2\) needs at least 4 evaluations"),
    ("smoke", {"max_steps": 2, "eval_steps": 3, "save_steps": 3}, r"eval_steps \(3\) is more than the 2 steps"),
])
def test_a_cadence_or_patience_the_user_set_that_cannot_work_is_still_refused(name, overrides, refusal):
    with pytest.raises(ParamsError, match=refusal):
        quick_look(name, **overrides).check()


def test_bad_cadence_values_are_params_errors():
    for bad in ("epochs", 0, True):
        with pytest.raises(ParamsError, match="number of steps .* 'epoch' .* 'auto'"):
            params.load("smoke", overrides={"eval_steps": bad})


def test_preflight_refuses_the_gpu_recipe_on_a_cpu_before_any_model_work():
    report = preflight.run_checks(params.load("default"))
    rows = {r["check"]: r for r in report.rows}
    assert not report.ok and rows["precision and device"]["status"] == "fail"
    assert "params_file 'cpu'" in rows["precision and device"]["detail"]
    assert "model" not in rows  # nothing about the (hub) model was even looked up


def test_preflight_names_the_numbers_of_a_schedule_that_never_evaluates(tiny_model_dir):
    report = preflight.run_checks(params.load("smoke", overrides={"eval_steps": 50, "save_steps": 50}))
    assert not report.ok
    assert any("eval_steps (50) is more than the 6 steps" in f for f in report.failures())


def test_polo_plan_shows_what_a_t4_would_run_without_loading_anything(capsys):
    from polo_lib import cli

    assert cli.main(["plan", "default", "--device", "t4"]) == 0
    out = capsys.readouterr().out
    assert "4-bit NF4 + float16" in out and "adamw_8bit" in out
    assert "13, 26, 39, 52, 65" in out                      # the seed recipe evaluates every epoch
    assert "3221924864" in out and "9175040" in out         # 3B base + LoRA r16 on q/k/v/o
    assert "speed" not in out                               # a GPU: nothing to warn about
    assert cli.main(["plan", "cpu", "--device", "cpu"]) == 0
    speed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("speed ")]
    assert len(speed) == 1 and "no CUDA GPU: training runs on the CPU, far slower" in speed[0]
    assert cli.main(["plan", "default", "--device", "cuda-no-bitsandbytes"]) == 2
    assert "pip install -r requirements/gpu.txt" in capsys.readouterr().err
    assert cli.main(["plan", "default"]) == 2               # this machine: no CUDA
    assert "params_file 'cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it from device.PROFILES, naming them
        cli.main(["plan", "default", "--device", "tpu"])
    assert exit_.value.code == 2 and "invalid choice: 'tpu' (choose from 'here', 't4'" in capsys.readouterr().err


SHIPPED = sorted(paths.QUEUES_DIR.glob("*.yaml")) + sorted(paths.SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_queue_and_sweep_has_a_schedule_that_can_act(path):
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    for item in body.get("variants") or body.get("pipeline") or [{}]:
        cfg = params.load(body["base"], overrides={**(body.get("set") or {}), **(item.get("set") or {})})
        train.plan(cfg.training, data.split_sizes(cfg.data)["train"]).check()
