"""Raw llama.cpp prefill and decode rates of one shipped model with the installed llama-cpp-python.

    python benchmarks/llama_kernels.py --model qwen0.5b --threads 2
    python benchmarks/llama_kernels.py --model qwen0.5b --threads 2 --backend-dir DIR

Run it once with each build to compare kernels (e.g. the default AVX2 wheel against a build with
``-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON``, whose CPU variants are shared libraries picked at
run time: ``--backend-dir`` is the folder holding its ``libggml-cpu-*.so``, which llama-cpp-python
does not load by itself). Prefill: one prompt of ``--prompt-tokens`` tokens evaluated at once, after a
warm-up; decode: ``--decode-tokens`` tokens generated one at a time (greedy) after it. Each is the
median of ``--repeats`` runs. Model loading is not timed.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import positive_int  # noqa: E402


def load_backends(folder: Path) -> str:
    """Loads the dynamic CPU backends in ``folder`` into the libggml that llama_cpp uses; the chosen one."""
    import llama_cpp  # noqa: F401  (loads libllama and, with it, the libggml it links)

    # by soname: the already loaded library, so the backends register where libllama looks for them
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path(str(folder).encode())
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    count = ggml.ggml_backend_reg_count()
    if count == 0:
        raise SystemExit(f"no ggml backend could be loaded from {folder}")
    return ", ".join(ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(count))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen0.5b", help="a shipped model name")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--prompt-tokens", type=positive_int, default=256)
    p.add_argument("--decode-tokens", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--backend-dir", type=Path, default=None, help="folder of libggml-cpu-*.so to load")
    args = p.parse_args()

    import llama_cpp

    from intentrec.semantic.llm.models import ensure_shipped_model

    backends = load_backends(args.backend_dir) if args.backend_dir else "built in"
    path = ensure_shipped_model(args.model)
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=args.prompt_tokens + args.decode_tokens + 8, n_threads=args.threads, verbose=False
    )
    text = "The quick brown fox jumps over the lazy dog near the river bank. " * 64
    tokens = llm.tokenize(text.encode())[: args.prompt_tokens]
    prefill, decode = [], []
    for _ in range(args.repeats + 1):  # the first round warms up
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(args.decode_tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        decode.append(args.decode_tokens / (time.perf_counter() - started))
    info = " ".join(llama_cpp.llama_print_system_info().decode().split())
    print(f"model {args.model}, {args.threads} threads, llama-cpp-python {llama_cpp.__version__}, backends: {backends}")
    print(f"system info: {info or '(empty)'}")
    print(
        f"prefill {statistics.median(prefill[1:]):.1f} tok/s ({len(tokens)}-token prompt), "
        f"decode {statistics.median(decode[1:]):.1f} tok/s (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
