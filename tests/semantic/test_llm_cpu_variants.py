"""Choosing llama.cpp's run-time CPU variant: the rule on fixed flag sets, and the installed build for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from intentrec.errors import IntentrecError
from intentrec.semantic.llm import cpu_variants as cv
from tests.helpers.llm import require_smollm2

ALL_X86 = sorted(cv.X86_VARIANTS)
AVX2_ONLY = {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"}
AVX512 = AVX2_ONLY | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
ICELAKE = AVX512 | {"avx512vbmi", "avx512_vnni"}
SAPPHIRE = ICELAKE | {"avx512_bf16", "amx_tile", "amx_int8", "avx_vnni"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (set(), "x64"),
        (AVX2_ONLY, "haswell"),
        (AVX2_ONLY | {"avx_vnni"}, "alderlake"),
        (AVX512, "skylakex"),
        (ICELAKE, "icelake"),
        (ICELAKE | {"avx512_bf16"}, "zen4"),
        (SAPPHIRE, "zen4"),  # AMX only when pinned
    ],
)
def test_auto_takes_the_best_runnable_variant_without_amx(flags, expected):
    assert cv.choose_variant(ALL_X86, flags) == expected


def test_auto_only_considers_installed_variants():
    assert cv.choose_variant(["haswell", "skylakex"], ICELAKE) == "skylakex"
    assert cv.choose_variant(["haswell", "icelake", "zen4"], ICELAKE) == "icelake"  # zen4 needs bf16


def test_avx512_needs_all_five_subsets():
    assert cv.choose_variant(ALL_X86, AVX512 - {"avx512vl"}) == "haswell"


def test_scores_follow_ggml_order():
    assert cv.score("x64") < cv.score("haswell") < cv.score("skylakex") < cv.score("icelake")
    assert cv.score("icelake") < cv.score("zen4") < cv.score("sapphirerapids")


def test_pinning_checks_installation_and_cpu():
    assert cv.choose_variant(ALL_X86, SAPPHIRE, "sapphirerapids") == "sapphirerapids"
    with pytest.raises(IntentrecError, match=r"'icelake' is not installed; installed: haswell"):
        cv.choose_variant(["haswell"], ICELAKE, "icelake")
    with pytest.raises(IntentrecError, match=r"needs avx512vbmi, avx512_vnni.*runnable here: .*skylakex"):
        cv.choose_variant(ALL_X86, AVX512, "icelake")
    with pytest.raises(IntentrecError, match="no installed llama.cpp CPU variant"):
        cv.choose_variant(["icelake"], AVX2_ONLY)


def test_reads_kernel_flags_and_finds_variant_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cv.read_cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx2"}
    assert cv.read_cpu_flags(tmp_path / "absent") == set()
    first, second = tmp_path / "lib", tmp_path / "bin"
    first.mkdir()
    second.mkdir()
    for folder, name in [(first, "libggml-cpu-icelake.so"), (second, "libggml-cpu-icelake.so")]:
        (folder / name).write_bytes(b"")
    (second / "libggml-cpu-haswell.so").write_bytes(b"")
    (second / "libggml-cpu.so").write_bytes(b"")  # the built-in kernels' library, not a variant
    found = cv.variant_libraries([first, second, tmp_path / "missing"])
    assert found == {"icelake": first / "libggml-cpu-icelake.so", "haswell": second / "libggml-cpu-haswell.so"}


# --- the installed llama-cpp-python, for real (each in a fresh process: one variant per process) ----
REPO = Path(__file__).resolve().parents[2]


def _run(code: str, env_variant: str | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(cv.ENV_VARIANT, None)
    if env_variant:
        env[cv.ENV_VARIANT] = env_variant
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


def _installed_variants() -> dict:
    pytest.importorskip("llama_cpp")
    return cv.installed_variants()


GENERATE = """
    from intentrec.semantic.llm import get_llm
    from intentrec.semantic.llm.base import DecodingConfig
    from tests.helpers.llm import PROMPTS
    llm = get_llm("smollm2", n_parallel=2, n_ctx_per_seq=512{extra})
    answer = llm.generate(PROMPTS[:2], DecodingConfig(max_tokens=8))
    import json
    print(llm.cpu_backend.variant)
    print(json.dumps([g.text for g in answer]))
"""


def test_installed_build_generates_with_its_kernels():
    require_smollm2()
    variants = _installed_variants()
    done = _run(GENERATE.format(extra=""))
    assert done.returncode == 0, done.stderr[-2000:]
    chosen, texts = done.stdout.strip().splitlines()[-2:]
    assert len(json.loads(texts)) == 2 and all(json.loads(texts))  # two non-empty answers
    expected = cv.choose_variant(sorted(variants), cv.read_cpu_flags()) if variants else "built in"
    assert chosen == expected


def test_pinning_a_variant_on_a_build_without_variants_says_how_to_install():
    require_smollm2()
    if _installed_variants():
        pytest.skip("this llama-cpp-python has run-time CPU variants")
    done = _run(GENERATE.format(extra=", cpu_variant='haswell'"))
    assert done.returncode != 0
    assert "INTENTREC_LLAMA_CPU_VARIANTS=1 bash scripts/install-llm.sh" in done.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "intentrec.semantic.llm.cpu_variants"], capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0 and "built in (no variants)" in listing.stdout


def test_each_runnable_variant_loads_when_pinned_and_a_foreign_one_is_refused():
    require_smollm2()
    variants = _installed_variants()
    if not variants:
        pytest.skip("this llama-cpp-python has its CPU kernels built in (INTENTREC_LLAMA_CPU_VARIANTS=0)")
    flags = cv.read_cpu_flags()
    tags = [t for t in ("haswell", "skylakex", "icelake") if t in variants and not cv.missing_flags(t, flags)]
    if len(tags) < 2:
        pytest.skip(f"fewer than two of haswell/skylakex/icelake run on this CPU ({tags})")
    outputs = {}
    for tag in tags:
        done = _run(GENERATE.format(extra=""), env_variant=tag)
        assert done.returncode == 0, done.stderr[-2000:]
        chosen, texts = done.stdout.strip().splitlines()[-2:]
        assert chosen == tag
        outputs[tag] = json.loads(texts)
    assert all(len(outputs[t]) == 2 and all(outputs[t]) for t in tags)
    foreign = [t for t in sorted(variants) if t in cv.X86_VARIANTS and cv.missing_flags(t, flags)]
    if not foreign:
        return  # this CPU runs every variant
    missing = foreign[0]
    refused = _run(GENERATE.format(extra=f", cpu_variant={missing!r}"))
    assert refused.returncode != 0 and "does not report in /proc/cpuinfo" in refused.stderr


def test_ggml_backend_path_is_honoured_under_auto():
    require_smollm2()
    variants = _installed_variants()
    if "haswell" not in variants or cv.missing_flags("haswell", cv.read_cpu_flags()):
        pytest.skip("needs the variants build with a runnable haswell variant")
    done = _run(GENERATE.format(extra=""), GGML_BACKEND_PATH=str(variants["haswell"]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2] == "haswell"
    assert cv.backend_path_env({"GGML_BACKEND_PATH": "x"}) == {"GGML_BACKEND_PATH": "x"}
    chosen = cv.choose_variant(sorted(variants), cv.read_cpu_flags())
    assert cv.backend_path_env({})["GGML_BACKEND_PATH"] == str(variants[chosen])
