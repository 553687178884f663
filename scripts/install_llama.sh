#!/usr/bin/env bash
# Installs llama-cpp-python into the given venv, built from source with the flags
# from llama_cmake_args.sh. The built wheel is kept in a cache folder keyed by
# version + flags, because pip's own wheel cache ignores CMAKE_ARGS and would
# happily reinstall a wheel built for another CPU.
set -euo pipefail
VENV=${1:-.venv}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
here=$(cd "$(dirname "$0")" && pwd)
CMAKE_ARGS=$("$here/llama_cmake_args.sh")
export CMAKE_ARGS
[[ "$CMAKE_ARGS" == *GGML_CUDA=ON* ]] && export PATH="/usr/local/cuda/bin:$PATH"
key=$(printf '%s %s' "$VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
cache="${KRONK_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kronk/wheels}/$key"
mkdir -p "$cache"
if ! ls "$cache"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION with CMAKE_ARGS=\"$CMAKE_ARGS\" (a few minutes)..."
  "$VENV/bin/pip" wheel --no-cache-dir --no-deps -w "$cache" "llama-cpp-python==$VERSION"
fi
"$VENV/bin/pip" install --find-links "$cache" --only-binary llama-cpp-python "llama-cpp-python==$VERSION"
echo "$CMAKE_ARGS" > "$VENV/.llama_cmake_args"
