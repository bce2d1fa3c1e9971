#!/usr/bin/env bash
# Compiles the CUDA kernels of the GPU path (reference-realm/src/signal/kernels.cu) to PTX with
# NVRTC, on a machine with no GPU and no CUDA: NVRTC is a plain library that needs neither. It
# comes from NVIDIA's `nvidia-cuda-nvrtc` wheel on PyPI (CUDA 13.0, the version the cudarc
# bindings are built for), installed into target/nvrtc-wheel (cached between runs), and reaches
# the test through LD_LIBRARY_PATH, where cudarc's loader looks for libnvrtc.so.13.
# MTOR_REQUIRE_NVRTC=1 makes the test fail rather than skip if NVRTC still cannot be loaded.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CARGO_TARGET_DIR:-target}/nvrtc-wheel"
lib="$dir/nvidia/cu13/lib"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
    'nvidia-cuda-nvrtc==13.0.*'
fi
lib="$(cd "$lib" && pwd)"
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MTOR_REQUIRE_NVRTC=1 \
  cargo test -p mtor-realm --locked --test nvrtc_ptx -- --nocapture
