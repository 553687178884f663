#!/usr/bin/env bash
# Prints the CMAKE_ARGS for building llama.cpp on this machine.
#
# Native tuning is always off: on CPUs with AMX, llama.cpp's AMX matmul path
# segfaults in llama_decode. Instead the instruction sets this CPU has are listed
# one by one (so a wheel built here never uses an instruction the CPU lacks).
# CUDA is turned on where nvcc and an NVIDIA GPU are present. KRONK_CMAKE_ARGS overrides everything.
set -euo pipefail
if [ -n "${KRONK_CMAKE_ARGS:-}" ]; then echo "$KRONK_CMAKE_ARGS"; exit 0; fi
flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
args="-DGGML_NATIVE=OFF"
has avx && args="$args -DGGML_AVX=ON"
has avx2 && args="$args -DGGML_AVX2=ON"
has fma && args="$args -DGGML_FMA=ON"
has f16c && args="$args -DGGML_F16C=ON"
if has avx512f; then
  args="$args -DGGML_AVX512=ON"
  has avx512_vnni && args="$args -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args="$args -DGGML_AVX512_BF16=ON"
fi
# CUDA needs both the compiler and a GPU: a CUDA build links libcuda, which a
# machine without an NVIDIA driver lacks (nvcc alone is not enough). KRONK_CUDA=1/0 forces it.
nvcc_ok=false; gpu_ok=false
{ command -v nvcc || [ -x /usr/local/cuda/bin/nvcc ]; } >/dev/null 2>&1 && nvcc_ok=true
nvidia-smi -L >/dev/null 2>&1 && gpu_ok=true
if [ "${KRONK_CUDA:-auto}" = 1 ] || { [ "${KRONK_CUDA:-auto}" = auto ] && $nvcc_ok && $gpu_ok; }; then
  args="$args -DGGML_CUDA=ON"
fi
echo "$args"
