"""What machine and software a run used: recorded once per run in run.json."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from attnbench.harness.allocator import thp_mode
from attnbench.schema import SCHEMA_VERSION

PACKAGES = ("torch", "numpy", "pandas", "hydra-core", "xformers", "triton", "attnbench")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Instruction-set extensions that set a CPU's GEMM rate, widest first: the first one present names it.
ISA_FLAGS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"))


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _cache_bytes(sysfs_cpu: Path) -> dict[str, int]:
    """Per-instance data/unified cache sizes of one CPU from sysfs: {"l1d": .., "l2": .., "l3": ..}."""
    out = {}
    for d in sorted(sysfs_cpu.glob("cache/index*")):
        try:
            level, kind = (d / "level").read_text().strip(), (d / "type").read_text().strip()
            size = (d / "size").read_text().strip().upper()  # "512K", "32768K", "2M"
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        out[f"l{level}" + ("d" if level == "1" else "")] = int(size.rstrip("KMG")) * mult
    return out


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo"),
                 sysfs_cpu: Path = Path("/sys/devices/system/cpu/cpu0")) -> dict[str, object]:
    """What tells two CPUs of one model name apart (a cloud's "AMD EPYC" is Zen 3 on one host,
    Zen 4 with AVX-512 and twice the GEMM rate on the next): vendor, family, model, stepping, the
    widest vector ISA and the cache sizes per instance. Empty where /proc/cpuinfo is unreadable."""
    try:
        f = _cpuinfo_fields(cpuinfo.read_text())
    except OSError:
        return {}
    flags = set(f.get("flags", "").split())
    ident: dict[str, object] = {"vendor": f.get("vendor_id"), "family": f.get("cpu family"),
                                "model": f.get("model"), "stepping": f.get("stepping"),
                                "isa": next((name for flag, name in ISA_FLAGS if flag in flags), None)}
    ident.update(_cache_bytes(sysfs_cpu))
    return {k: v for k, v in ident.items() if v is not None}


def _size(b: int) -> str:
    return f"{b >> 20} MiB" if b >= 1 << 20 and not b % (1 << 20) else f"{b >> 10} KiB"


def cpu_summary(ident: dict | None) -> str | None:
    """One short line for reports: ``family 25 model 1, AVX2, L2 512 KiB, L3 32 MiB``."""
    if not ident:
        return None
    bits = []
    if ident.get("family") is not None:
        bits.append(f"family {ident['family']} model {ident.get('model', '?')}")
    if ident.get("isa"):
        bits.append(str(ident["isa"]))
    bits += [f"{lvl.upper()} {_size(int(ident[lvl]))}" for lvl in ("l2", "l3") if ident.get(lvl)]
    return ", ".join(bits) or None


def with_cpu(name: str, ident: dict | None) -> str:
    """``name`` followed by the CPU's summary in parentheses where run.json recorded one."""
    cpu = cpu_summary(ident)
    return f"{name} ({cpu})" if cpu else name


def inductor_cache_dir() -> str:
    """Where workers keep torch.compile's (inductor's) cache between runs: TORCHINDUCTOR_CACHE_DIR
    if set, else <XDG_CACHE_HOME or ~/.cache>/attnbench/inductor. A warm cache turns a
    FlexAttention compile of ~4 s into a ~0.2 s load on a 2-core CPU."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "attnbench", "inductor")


def mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["python"] = platform.python_version()
    return out


def git_state(repo: Path | None = None) -> dict[str, object]:
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty if sha else None}


def host_environment() -> dict[str, object]:
    """Everything knowable without importing CUDA: the parent's part of run.json."""
    return {
        "schema_version": SCHEMA_VERSION,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu": cpu_identity(),  # the model name alone does not tell the machine (cpu_summary)
        "cpu_count": os.cpu_count(),
        "mem_available_bytes": mem_available_bytes(),
        "load_average_1m": os.getloadavg()[0],  # other load ruins multi-threaded CPU timings
        # madvise: the engines' large outputs go onto huge pages (engines/pages.py); never: not
        "transparent_hugepage": thp_mode(),
        # Allocator and threading settings that change CPU timings (workers inherit them): e.g.
        # THP_MEM_ALLOC_ENABLE=1 backs large tensors with huge pages, far fewer page faults.
        "env_vars": {k: v for k, v in sorted(os.environ.items())
                     if k.startswith(("MALLOC_", "THP_", "OMP_", "MKL_", "KMP_", "LD_PRELOAD"))},
        "inductor_cache_dir": inductor_cache_dir(),
        "versions": versions(),
        **git_state(),
    }


def device_environment(device: str) -> dict[str, object]:
    """The worker's part: device name and memory, torch build. May initialize CUDA."""
    import torch

    info: dict[str, object] = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_total_bytes=props.total_memory,
                    device_capability=f"{props.major}.{props.minor}")
    else:
        info.update(device_name=cpu_model(), device_total_bytes=mem_available_bytes())
    return info
