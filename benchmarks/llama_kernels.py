"""Raw llama.cpp prefill and decode rates of one shipped model with the installed llama-cpp-python.

    python benchmarks/llama_kernels.py --model qwen0.5b --threads 2
    python benchmarks/llama_kernels.py --model qwen0.5b --threads 2 --cpu-variant icelake

Run it once with each build or variant to compare kernels: the default AVX2 wheel against a build
with run-time CPU variants (``INTENTREC_LLAMA_CPU_VARIANTS=1 bash scripts/install-llm.sh``), whose
kernels are one shared library per CPU generation; ``--cpu-variant`` pins one (``auto``: the best this
CPU runs, see ``intentrec.semantic.llm.cpu_variants``). Prefill: one prompt of ``--prompt-tokens``
tokens evaluated at once, after a warm-up; decode: ``--decode-tokens`` tokens generated one at a time
(greedy) after it. Each is the median of ``--repeats`` runs. Model loading is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import positive_int  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen0.5b", help="a shipped model name")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--prompt-tokens", type=positive_int, default=256)
    p.add_argument("--decode-tokens", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--cpu-variant", default=None, help="llama.cpp CPU variant to load (default: auto)")
    args = p.parse_args()

    import llama_cpp

    from intentrec.errors import IntentrecError
    from intentrec.semantic.llm.cpu_variants import ensure_cpu_backend
    from intentrec.semantic.llm.models import ensure_shipped_model

    try:
        backends = ensure_cpu_backend(args.cpu_variant).variant
    except IntentrecError as error:
        raise SystemExit(f"error: {error}") from None
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
