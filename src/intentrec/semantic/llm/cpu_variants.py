"""llama.cpp's CPU kernels chosen at run time: one build for every x86-64 CPU, the best kernels on each.

A llama-cpp-python built with ``-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON``
(``INTENTREC_LLAMA_CPU_VARIANTS=1 bash scripts/install-llm.sh``) holds no CPU kernels in its core
libraries; it ships one shared library per CPU generation instead (``libggml-cpu-haswell.so``,
``…-icelake.so``, …) and something has to load one before a model is opened. llama-cpp-python does
not, so :func:`ensure_cpu_backend` does, once per process:

* ``auto`` (the default) takes the installed variant with the highest ggml score among those whose
  every instruction-set extension the **kernel** reports in ``/proc/cpuinfo`` (ggml's own choice asks
  CPUID, which also reports extensions the OS has not enabled), leaving out the AMX variants: on the
  virtual machines measured here ggml picked ``sapphirerapids`` because CPUID reported AMX, and half
  of those runs died of an illegal instruction (docs/results/llm-throughput.md). Pin AMX by name.
* A name (``icelake``) pins that variant; one the CPU cannot run, or one that is not installed, is a
  clear error.

The choice comes from ``LlamaCppConfig.cpu_variant`` (``--llm-set cpu_variant=icelake``), else from
``$INTENTREC_LLAMA_CPU_VARIANT``, else ``auto`` (which loads ``$GGML_BACKEND_PATH`` when that is set). With the default wheel (kernels built in) there is
nothing to choose: ``auto`` is a no-op and a pinned name is an error that says how to install the
variants. A separate process (``python -m llama_cpp.server``) finds the variant through
``GGML_BACKEND_PATH`` (:func:`backend_path_env`); ``python -m intentrec.semantic.llm.cpu_variants``
prints the line to export.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from intentrec.errors import IntentrecError

ENV_VARIANT = "INTENTREC_LLAMA_CPU_VARIANT"
INSTALL_HINT = "install them with: INTENTREC_LLAMA_CPU_VARIANTS=1 bash scripts/install-llm.sh"

# ggml's x86 variants (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS) and the ggml features each is
# compiled with; the bit of each feature in ggml's score (ggml-cpu/arch/x86/cpu-feats.cpp).
X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": (
        *("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
        *("AMX_TILE", "AMX_INT8"),
    ),
}
SCORE_BIT = {
    "FMA": 0, "F16C": 1, "SSE42": 2, "BMI2": 3, "AVX": 4, "AVX2": 5, "AVX_VNNI": 6,
    "AVX512": 7, "AVX512_VBMI": 8, "AVX512_BF16": 9, "AVX512_VNNI": 10, "AMX_INT8": 11,
}  # fmt: skip
# /proc/cpuinfo flags each ggml feature needs (AVX512 is compiled as F, CD, VL, DQ and BW).
CPUINFO_FLAGS = {
    "SSE42": ("sse4_2",), "AVX": ("avx",), "F16C": ("f16c",), "FMA": ("fma",), "AVX2": ("avx2",),
    "BMI2": ("bmi2",), "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",), "AMX_INT8": ("amx_int8",),
}  # fmt: skip
_LIB_NAME = re.compile(r"^libggml-cpu-(?P<tag>[A-Za-z0-9_.]+)\.so$")


def score(variant: str) -> int:
    """ggml's score of a variant on a CPU that has all its features (higher is better)."""
    return 1 + sum(1 << SCORE_BIT[f] for f in X86_VARIANTS[variant] if f in SCORE_BIT)


def missing_flags(variant: str, cpu_flags: set[str]) -> list[str]:
    """The /proc/cpuinfo flags a variant needs that the CPU does not report."""
    needed = [flag for feature in X86_VARIANTS[variant] for flag in CPUINFO_FLAGS[feature]]
    return [flag for flag in needed if flag not in cpu_flags]


def choose_variant(installed: list[str], cpu_flags: set[str], requested: str = "auto") -> str:
    """The variant to load: ``requested`` checked, or the best runnable non-AMX one for ``auto``."""
    known = [v for v in installed if v in X86_VARIANTS]
    if requested != "auto":
        if requested not in installed:
            raise IntentrecError(
                f"llama.cpp CPU variant {requested!r} is not installed; installed: {', '.join(installed) or 'none'}"
            )
        if requested in X86_VARIANTS and (lacking := missing_flags(requested, cpu_flags)):
            raise IntentrecError(
                f"llama.cpp CPU variant {requested!r} needs {', '.join(lacking)}, which this CPU does not "
                f"report in /proc/cpuinfo; runnable here: {', '.join(runnable(known, cpu_flags)) or 'none'}"
            )
        return requested
    candidates = [v for v in runnable(known, cpu_flags) if "AMX_INT8" not in X86_VARIANTS[v]]
    if not candidates:
        raise IntentrecError(f"no installed llama.cpp CPU variant ({', '.join(installed) or 'none'}) runs on this CPU")
    return max(candidates, key=score)


def runnable(variants: list[str], cpu_flags: set[str]) -> list[str]:
    return [v for v in variants if v in X86_VARIANTS and not missing_flags(v, cpu_flags)]


def read_cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty off Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def variant_libraries(folders: list[Path]) -> dict[str, Path]:
    """``{tag: path}`` of the ``libggml-cpu-<tag>.so`` files in ``folders`` (first folder wins)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if (m := _LIB_NAME.match(path.name)) and m["tag"] not in found:
                found[m["tag"]] = path
    return found


def library_folders(llama_cpp_module) -> list[Path]:
    """Where a llama-cpp-python install keeps its variants: ``site-packages/bin`` (ggml's install
    rule puts backend modules in the binary folder) or next to libllama."""
    package = Path(llama_cpp_module.__file__).resolve().parent
    return [package / "lib", package.parent / "bin"]


def installed_variants() -> dict[str, Path]:
    """``{tag: path}`` of the installed llama-cpp-python's CPU variants (empty: kernels built in)."""
    import llama_cpp

    return variant_libraries(library_folders(llama_cpp))


@dataclass(frozen=True)
class CpuBackend:
    variant: str  # "built in", or the loaded variant's tag
    path: Path | None


_LOADED: CpuBackend | None = None
_LOCK = threading.Lock()


def _ggml() -> ctypes.CDLL:
    # The libggml that libllama already loaded, by its soname: a wheel stores libggml.so, .so.0 and
    # .so.0.x as three copies, and opening another copy by path would give a second, empty registry.
    try:
        ggml = ctypes.CDLL("libggml.so.0", mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
    except OSError:
        raise IntentrecError("llama.cpp's libggml.so.0 is not loaded; cannot load a CPU variant") from None
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    return ggml


def requested_variant(configured: str | None = None) -> str:
    return configured or os.environ.get(ENV_VARIANT) or "auto"


def _load(requested: str) -> CpuBackend:
    variants = installed_variants()
    if not variants:
        return CpuBackend("built in", None)
    ggml = _ggml()
    if ggml.ggml_backend_reg_by_name(b"CPU"):
        return CpuBackend("loaded elsewhere", None)  # someone initialised llama.cpp's backends first
    forced = os.environ.get("GGML_BACKEND_PATH") if requested == "auto" else None
    if forced:  # ggml's own variable names the library: honour it
        path = Path(forced)
        m = _LIB_NAME.match(path.name)
        tag = m["tag"] if m else path.name
    elif requested == "auto" and not any(v in X86_VARIANTS for v in variants):
        # not an x86 build (ARM, ...): ggml's own choice, which this module has no table for
        folder = next(iter(variants.values())).parent
        ggml.ggml_backend_load_all_from_path(str(folder).encode())
        if not ggml.ggml_backend_reg_by_name(b"CPU"):
            raise IntentrecError(f"llama.cpp loaded no CPU variant from {folder}")
        return CpuBackend("ggml's choice", folder)
    else:
        tag = choose_variant(sorted(variants), read_cpu_flags(), requested)
        path = variants[tag]
    if not ggml.ggml_backend_load(str(path).encode()):
        raise IntentrecError(f"llama.cpp could not load its CPU variant {path}")
    return CpuBackend(tag, path)


def ensure_cpu_backend(configured: str | None = None) -> CpuBackend:
    """Makes sure llama.cpp has CPU kernels in this process (loading a variant once); what is in use."""
    global _LOADED
    requested = requested_variant(configured)
    with _LOCK:
        if _LOADED is None:
            _LOADED = _load(requested)
    if requested != "auto" and _LOADED.variant != requested:
        if _LOADED.variant == "built in":
            raise IntentrecError(
                f"llama.cpp CPU variant {requested!r} asked for, but this llama-cpp-python has its kernels "
                f"built in and no variants; {INSTALL_HINT}"
            )
        raise IntentrecError(
            f"llama.cpp CPU variant {requested!r} asked for, but this process already uses "
            f"{_LOADED.variant!r} (one variant per process)"
        )
    return _LOADED


def backend_path_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``GGML_BACKEND_PATH`` set to the variant ``auto`` or
    ``$INTENTREC_LLAMA_CPU_VARIANT`` picks, for starting a separate llama.cpp process (a server); as
    it was when the install has no variants or the variable is already set."""
    env = dict(os.environ if env is None else env)
    try:
        variants = installed_variants()
    except ImportError:
        return env
    if variants and "GGML_BACKEND_PATH" not in env:
        tag = choose_variant(sorted(variants), read_cpu_flags(), env.get(ENV_VARIANT) or "auto")
        env["GGML_BACKEND_PATH"] = str(variants[tag])
    return env


def main() -> int:
    """Prints the installed variants, which this CPU runs, the one ``auto`` takes and its path."""
    import llama_cpp

    variants = installed_variants()
    flags = read_cpu_flags()
    if not variants:
        print(f"llama-cpp-python {llama_cpp.__version__}: CPU kernels built in (no variants); {INSTALL_HINT}")
        return 0
    print(f"llama-cpp-python {llama_cpp.__version__}: CPU variants in {next(iter(variants.values())).parent}")
    for tag in sorted(variants, key=lambda t: score(t) if t in X86_VARIANTS else -1):
        lacking = missing_flags(tag, flags) if tag in X86_VARIANTS else ["(unknown variant)"]
        state = "runs here" if not lacking else "needs " + ", ".join(lacking)
        print(f"  {tag:<15} {state}")
    try:
        tag = choose_variant(sorted(variants), flags, requested_variant())
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"chosen ({requested_variant()}): {tag}")
    print(f"for a separate llama.cpp process: export GGML_BACKEND_PATH={variants[tag]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
