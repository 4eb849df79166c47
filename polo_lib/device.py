"""What this machine can do, and what a recipe will therefore run with, as pure functions.

`describe()` reads the machine once: CUDA or not, the GPU's compute capability, free memory,
whether bitsandbytes imports and whether its NF4 4-bit runs here. Every decision the GPU path
makes (precision, optimizer, 4-bit, gradient checkpointing, refusing a GPU recipe on a CPU) is
`decide(device, cfg)`, a pure function of that description and the params, so each branch is
tested as a table on a CPU (tests/test_device.py: T4, A10G, RTX 4090, H100/H200, CUDA without
bitsandbytes, a CPU with and without bitsandbytes' NF4).

4-bit on a CPU: Unsloth 2026.10.9's CPU backend quantizes to NF4 through bitsandbytes' CPU backend
(bitsandbytes >= 0.50) when Unsloth's own probe, a real Linear4bit forward and backward, passes
(`unsloth_zoo.cpu.runtime.cpu_bnb_4bit_supported`). `describe()` asks that same probe, so the
decision and the loader never disagree about a machine.

Why not torch's own answers: torch 2.13's `torch.cuda.is_bf16_supported()` counts emulation and
says True on a T4 (compute capability 7.5), where bf16 runs several times slower than fp16. bf16
here means the hardware has it: compute capability 8.0 (Ampere) or newer.

This module imports nothing from polo_lib but errors (and unsloth_first, to ask Unsloth's probe
in the order Unsloth needs), so any layer (params' `auto` choice included) may ask it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import ModelError

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; a T4 (7.5) only emulates bf16
# optimizers TRL builds from bitsandbytes (8-bit states, or paged): they need it importable on CUDA
# AdamW on a CPU: Unsloth's CPU trainer (unsloth_zoo.cpu.trainer) turns adamw_torch into torch's fused
# kernel (torch >= 2.4; this project pins 2.13), so that is what is decided, recorded and checked.
CPU_ADAMW = "adamw_torch_fused"
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit", "paged_adamw_32bit", "lion_8bit")


@dataclass(frozen=True)
class Device:
    """A machine as the decisions see it. Build one by hand to ask "what would a T4 do?"."""
    kind: Literal["cuda", "cpu"]
    name: str
    memory_total: int  # bytes (GPU memory on cuda, RAM on cpu)
    memory_free: int
    compute_capability: tuple[int, int] | None = None  # cuda only, e.g. (7, 5) for a T4
    bitsandbytes: bool = False  # importable: 4-bit loading and 8-bit optimizers need it
    count: int = 1
    threads: int | None = None
    # bitsandbytes' NF4 runs here. None: not probed, which means "as bitsandbytes" on CUDA (its CUDA
    # library ships in the wheel) and "no" on a CPU (only Unsloth's forward/backward probe says yes).
    nf4: bool | None = None

    def __post_init__(self):
        if self.nf4 is None:  # frozen: the default is derived once, here
            object.__setattr__(self, "nf4", bool(self.bitsandbytes and self.cuda))

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def bf16(self) -> bool:
        """bf16 in hardware, never emulated."""
        return self.cuda and self.compute_capability is not None and \
            tuple(self.compute_capability) >= BF16_MIN_CAPABILITY

    def as_dict(self) -> dict[str, Any]:
        """The manifest's `device` entry (and what older code reads: device, bf16)."""
        out = asdict(self)
        out["device"] = out.pop("kind")
        out["bf16"] = self.bf16
        if self.compute_capability is not None:
            out["compute_capability"] = ".".join(map(str, self.compute_capability))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        """Inverse of `as_dict` (also takes a manifest written before compute capability was recorded)."""
        cc = d.get("compute_capability")
        if isinstance(cc, str):
            cc = tuple(int(x) for x in cc.split("."))
        return cls(kind=d.get("device", d.get("kind", "cpu")), name=d.get("name", "?"),
                   memory_total=int(d.get("memory_total") or 0), memory_free=int(d.get("memory_free") or 0),
                   compute_capability=tuple(cc) if cc else None, bitsandbytes=bool(d.get("bitsandbytes")),
                   count=int(d.get("count") or 1), threads=d.get("threads"), nf4=d.get("nf4"))


def as_device(device: Device | dict | None) -> Device:
    """A Device from a Device, a device dict (a manifest's) or None (this machine)."""
    if device is None:
        return describe()
    return device if isinstance(device, Device) else Device.from_dict(device)


def bitsandbytes_importable() -> bool:
    """Whether bitsandbytes is installed, without importing it (its import loads CUDA libraries)."""
    return importlib.util.find_spec("bitsandbytes") is not None


# Unsloth's switch for its CPU 4-bit path (unsloth_zoo.cpu.runtime): 0/false/no/off turns it off.
CPU_4BIT_SWITCH = "UNSLOTH_CPU_LOAD_IN_4BIT"


@functools.cache
def cpu_nf4_works() -> bool:
    """Whether Unsloth's CPU backend will load 4-bit here: bitsandbytes installed and Unsloth's own
    probe (a real NF4 Linear4bit forward and backward, ~0.1 s) passing. Asked once per process;
    Unsloth is imported first, as it must be before transformers (bitsandbytes comes with it)."""
    if not bitsandbytes_importable():
        return False
    from .unsloth_first import import_unsloth

    import_unsloth()
    from unsloth_zoo.cpu.runtime import cpu_bnb_4bit_supported

    return bool(cpu_bnb_4bit_supported())


def describe() -> Device:
    """This machine: what the decisions and the manifest need (written before any model loads)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return Device("cuda", torch.cuda.get_device_name(0), total, free,
                      compute_capability=tuple(torch.cuda.get_device_capability(0)),
                      bitsandbytes=bitsandbytes_importable(), count=torch.cuda.device_count())
    vm = psutil.virtual_memory()
    return Device("cpu", cpu_name(), vm.total, vm.available, bitsandbytes=bitsandbytes_importable(),
                  threads=torch.get_num_threads(), nf4=cpu_nf4_works())


def no_nf4_reason(device: Device) -> str:
    """Why bitsandbytes' 4-bit cannot load on `device` (empty when it can)."""
    if device.nf4:
        return ""
    if not device.bitsandbytes:
        return ("bitsandbytes is not installed (make setup installs the pinned one: its CPU backend runs NF4; "
                "pip install -r requirements/gpu.txt on a GPU)")
    if device.cuda:
        return "bitsandbytes' CUDA library does not run on this GPU"
    if os.environ.get(CPU_4BIT_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{CPU_4BIT_SWITCH}={os.environ[CPU_4BIT_SWITCH]} turns Unsloth's CPU 4-bit path off"
    return (f"bitsandbytes' CPU backend failed Unsloth's NF4 forward/backward check on this CPU ({device.name}; "
            "it needs AVX2 or AVX-512)")


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """What running out of memory raises: torch's OutOfMemoryError (CUDA), MemoryError (CPU)."""
    import torch

    return (torch.OutOfMemoryError, MemoryError)


def memory_in_use() -> dict[str, Any]:
    """What this process holds (at its peak) and what the device has, in GiB: the figures an
    out-of-memory message names. CUDA: torch's allocator on GPU 0; CPU: resident memory."""
    import psutil
    import torch

    gib = 2 ** 30
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"device": "cuda", "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
                "reserved_gib": round(torch.cuda.memory_reserved() / gib, 2),
                "free_gib": round(free / gib, 2), "total_gib": round(total / gib, 2)}
    import resource

    vm = psutil.virtual_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"device": "cpu", "peak_rss_gib": round(peak / gib, 2), "available_gib": round(vm.available / gib, 2),
            "total_gib": round(vm.total / gib, 2)}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# ------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Decisions:
    """What a recipe runs with on a device: one answer for loading, training, memory and the manifest."""
    dtype: str                 # weights / compute dtype: float32, float16, bfloat16
    load_in_4bit: bool         # bitsandbytes NF4 really applied
    optim: str                 # the optimizer name TRL gets
    gradient_checkpointing: bool | str  # "unsloth" (offloaded, GPU), True (recompute), False
    fp16: bool                 # trainer mixed precision flags
    bf16: bool
    use_cpu: bool
    notes: tuple[str, ...] = field(default=())  # every place where what applies differs from what was asked

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decisions:
        """Inverse of `as_dict` (a manifest's `decisions`)."""
        return cls(**{**d, "notes": tuple(d.get("notes") or ())})

    @property
    def precision(self) -> str:
        return "4-bit NF4 + " + self.dtype if self.load_in_4bit else self.dtype


def decide(device: Device, model_params, lora_params, training_params) -> Decisions:
    """Every device-dependent choice for a recipe, or a ModelError saying what to change.

    - GPU recipe (model.require_gpu) on a machine without CUDA: refused, naming the params to use.
    - dtype auto: bfloat16 from compute capability 8.0, float16 below (T4), float32 on a CPU
      (bf16 on these CPUs measured 6-25x slower than fp32). bfloat16 asked on a GPU without it: refused.
    - 4-bit: wherever bitsandbytes' NF4 runs (CUDA with bitsandbytes; a CPU whose bitsandbytes CPU
      backend passes Unsloth's probe). CUDA without bitsandbytes: refused with the install command;
      a CPU where NF4 does not run falls back to the dtype above, and a note says why.
    - optim auto: adamw_8bit where bitsandbytes imports on CUDA (optimizer states in 1/4 of the
      memory), adamw_torch elsewhere; an 8-bit optimizer asked without bitsandbytes: refused.
    - gradient checkpointing "unsloth" (offloads activations to RAM, GPU only) becomes plain
      recomputation on a CPU.
    """
    notes: list[str] = []
    if getattr(model_params, "require_gpu", False) and not device.cuda:
        raise ModelError(
            "this is a GPU recipe (model.require_gpu: true) but this machine has no CUDA GPU "
            f"({device.name}). Use params_file 'cpu' (the offline SmolLM2 demo) or 'auto' (picks "
            "'default' on a GPU, 'cpu' elsewhere), or set model.require_gpu: false to train it on the CPU anyway.")
    dtype = _dtype(model_params.dtype, device)
    four_bit = bool(model_params.load_in_4bit)
    if four_bit and device.cuda and not device.bitsandbytes:
        raise ModelError("load_in_4bit needs bitsandbytes, which is not installed in this environment "
                         f"(CUDA GPU: {device.name}). Install the pinned GPU stack: "
                         "pip install -r requirements/gpu.txt (or set model.load_in_4bit: false).")
    if four_bit and not device.nf4:
        notes.append(f"load_in_4bit was asked, but {no_nf4_reason(device)}: loading {dtype} weights instead.")
        four_bit = False
    optim = training_params.optim
    if optim == "auto":
        optim = "adamw_8bit" if device.cuda and device.bitsandbytes else "adamw_torch" if device.cuda else CPU_ADAMW
    elif optim == "adamw_torch" and not device.cuda:
        notes.append(f"training.optim adamw_torch: Unsloth's CPU trainer runs it as {CPU_ADAMW}, the same AdamW "
                     "in one fused CPU kernel.")
        optim = CPU_ADAMW
    elif (optim in BNB_OPTIMIZERS or "bnb" in optim) and not (device.cuda and device.bitsandbytes):
        where = "bitsandbytes is not installed" if device.cuda else "this machine has no CUDA GPU"
        raise ModelError(f"training.optim '{optim}' is a bitsandbytes optimizer, but {where}. "
                         "Use optim: auto (adamw_8bit on a GPU with bitsandbytes, adamw_torch elsewhere) "
                         "or adamw_torch.")
    checkpointing = {"unsloth": "unsloth" if device.cuda else True, "true": True, "false": False}[
        lora_params.use_gradient_checkpointing]
    return Decisions(dtype=dtype, load_in_4bit=four_bit, optim=optim, gradient_checkpointing=checkpointing,
                     fp16=device.cuda and dtype == "float16", bf16=device.cuda and dtype == "bfloat16",
                     use_cpu=not device.cuda, notes=tuple(notes))


def auto_dtype(device: Device) -> str:
    """bfloat16 from compute capability 8.0, float16 on older GPUs (T4), float32 on a CPU."""
    if not device.cuda:
        return "float32"
    return "bfloat16" if device.bf16 else "float16"


def _dtype(asked: str, device: Device) -> str:
    if asked == "auto":
        return auto_dtype(device)
    if asked == "bfloat16" and device.cuda and not device.bf16:
        cc = ".".join(map(str, device.compute_capability or ())) or "?"
        raise ModelError(f"model.dtype bfloat16 asked, but {device.name} (compute capability {cc}) has no "
                         "bf16 hardware: torch would emulate it, several times slower. Use dtype: auto "
                         "(float16 here) or float16.")
    return asked


def torch_dtype(name: str):
    import torch
    return getattr(torch, name)


def decide_for(cfg, device: Device | None = None) -> Decisions:
    """`decide` for a whole Params on this machine (or the given device)."""
    return decide(device or describe(), cfg.model, cfg.lora, cfg.training)


_GiB = 1024 ** 3
# Machines to ask "what would this run with there?" (`polo plan PARAMS --device t4`), and the
# rows of the decision table in tests/test_device.py. Memory as the cards report it.
PROFILES: dict[str, Device] = {
    "t4": Device("cuda", "Tesla T4", 15 * _GiB, 15 * _GiB, (7, 5), True),
    "a10g": Device("cuda", "NVIDIA A10G", int(22.5 * _GiB), int(22.5 * _GiB), (8, 6), True),
    "rtx4090": Device("cuda", "NVIDIA GeForce RTX 4090", 24 * _GiB, 24 * _GiB, (8, 9), True),
    "h100": Device("cuda", "NVIDIA H100 80GB HBM3", int(79.6 * _GiB), int(79.6 * _GiB), (9, 0), True),
    "h200": Device("cuda", "NVIDIA H200", int(139.8 * _GiB), int(139.8 * _GiB), (9, 0), True),
    "cuda-no-bitsandbytes": Device("cuda", "Tesla T4 (no bitsandbytes)", 15 * _GiB, 15 * _GiB, (7, 5), False),
    # `make setup` installs bitsandbytes, whose CPU backend runs NF4 on AVX2/AVX-512 CPUs
    "cpu": Device("cpu", "a CPU", 16 * _GiB, 16 * _GiB, bitsandbytes=True, threads=2, nf4=True),
    "cpu-no-bitsandbytes": Device("cpu", "a CPU (no bitsandbytes)", 16 * _GiB, 16 * _GiB, threads=2),
}


def profile(name: str | None) -> Device:
    """A named profile, or (None / 'here') this machine."""
    if name in (None, "here"):
        return describe()
    if name not in PROFILES:
        raise ModelError(f"device '{name}' unknown; choose one of: here, {', '.join(PROFILES)}.")
    return PROFILES[name]


AUTO_PARAMS = {"cuda": "default", "cpu": "cpu"}


def auto_params_name(device_kind: str | None = None) -> str:
    """params_file 'auto': the GPU recipe where a CUDA GPU is present, the offline CPU demo elsewhere."""
    kind = device_kind or ("cuda" if has_cuda() else "cpu")
    return AUTO_PARAMS[kind]
