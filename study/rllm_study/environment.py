"""Facts about where a run happened, for manifests: hardware, OS, package versions, git commit."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import psutil

PACKAGES = ("rllm-study", "llama-cpp-python", "mlx", "mlx-lm", "numpy", "datasets", "math-verify", "httpx")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return platform.processor() or platform.machine()


def _gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    gpus = []
    for line in out.stdout.strip().splitlines() if out.returncode == 0 else []:
        name, mem, driver = [p.strip() for p in line.split(",")]
        gpus.append({"name": name, "memory_mib": int(float(mem)), "driver": driver})
    return gpus


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, with "-dirty" when tracked files changed.
    Installed from a wheel there is no checkout: then RLLM_STUDY_GIT_COMMIT, which the builder
    of the wheel sets to this function's answer at build time (scripts/gpu/prepare.sh), else None."""
    here = Path(__file__).resolve().parent
    if not (here.parent / ".git").exists() and os.environ.get("RLLM_STUDY_GIT_COMMIT"):
        return os.environ["RLLM_STUDY_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _versions() -> dict:
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    found["python"] = platform.python_version()
    return found


@lru_cache(maxsize=1)
def environment() -> dict:
    """Hardware fingerprint (CPU model, cores, RAM, GPUs, OS), package versions, git commit."""
    mem = psutil.virtual_memory().total
    return {
        "hardware": {
            "cpu": _cpu_model(),
            "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(logical=True) or os.cpu_count(),
            "ram_bytes": mem,
            "gpus": _gpus(),
            "cuda_visible_devices": os.environ.get(
                "CUDA_VISIBLE_DEVICES"
            ),  # the GPUs this process may use (run --gpus)
            "machine": platform.machine(),
        },
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "git_commit": git_commit(),
    }
