"""Hand-written C++ kernels, built on first use for the machine that runs them.

``cpu_extension(name)`` compiles ``<name>.cpp`` beside this file with ``torch.utils.cpp_extension.load``
(``-O3 -march=native -fopenmp``: the kernels use AVX-512 where the CPU has it, plain C++ elsewhere, and
torch's threads) and returns the module, or None after one warning if it cannot be built (no C++ compiler,
no ninja, a non-x86 quirk): the callers then run their torch.compile / eager path. The build directory is
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); its name carries a hash of the source,
the CPU's instruction-set flags and the torch version, so a cache shared by different machines never
loads a build made for another CPU. ``LONGTAIL_CPU_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

SOURCES = Path(__file__).parent
# OpenMP: at::parallel_for is inline code that splits work over torch's OpenMP threads only when the
# extension itself is compiled with it (it then links the libgomp torch has already loaded).
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def cpu_kernels_enabled() -> bool:
    return os.environ.get("LONGTAIL_CPU_KERNELS", "1") not in ("0", "false", "off")


def cpu_extension(name: str) -> ModuleType | None:
    """The compiled extension ``name`` (from ``<name>.cpp``), or None: kernels turned off, or (with a
    warning, once) it cannot be built."""
    return _build(name) if cpu_kernels_enabled() else None


@cache
def _build(name: str) -> ModuleType | None:
    source = SOURCES / f"{name}.cpp"
    try:
        from torch.utils import cpp_extension

        _put_ninja_on_path()
        return cpp_extension.load(
            name=f"longtail_{name}_{_build_key(source)}",
            sources=[str(source)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001 - any build failure falls back to the library's torch path
        warnings.warn(
            f"longtail: could not build the C++ kernel '{name}' ({type(error).__name__}: {error}); using the "
            "slower torch path. Install a C++ compiler and ninja (pip install ninja) to get it."
        )
        return None


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pip package's binary sits in the environment's bin/
    folder, which is not on PATH when a virtual environment's python runs without being activated."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _build_key(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    digest.update(_cpu_flags().encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:12]


def _cpu_flags() -> str:
    """The instruction-set flags of this CPU (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()
