#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). CI runs exactly this via .ci/run.
# Installs what it needs (the Python JSON Schema validator used as the independent check of the
# contract), then: format, lints, the Rust test suite, and the independent contract check.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "python deps for the independent contract validator"
if ! python3 -c 'import jsonschema, yaml' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'jsonschema>=4.18' 'pyyaml>=6'
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the reference realm's container image (for the --image tests; needs a container engine)"
# Static release build + FROM-scratch image. Without an engine this prints SKIPPED, unless
# MTOR_REQUIRE_DOCKER=1 (.ci/run sets it: CI has an engine), where it fails.
ci/build-images.sh --if-engine

step "cargo test"
cargo test --workspace --locked

step "the GPU path's CUDA kernels compile to PTX (NVRTC from the nvidia-cuda-nvrtc wheel; no GPU needed)"
ci/nvrtc.sh

step "independent contract check (python-jsonschema, not our validator)"
python3 ci/check-contract.py

step "the harness certifies the reference realm (every case must PASS, and the bundle verify)"
cargo build --workspace --bins --locked
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# --mode certification: no SKIP allowed, UNKNOWN is not a pass; exit 0 only if every case passed.
target/debug/mtor-cert run --mode certification --out "$out/bundle"
target/debug/mtor-cert verify "$out/bundle.tar.gz"

step "the harness certifies the reference realm's image (--image: the container cases too)"
image="mtor-realm:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
if docker image inspect "$image" >/dev/null 2>&1; then
  target/debug/mtor-cert run --image "$image" --mode certification --out "$out/image-bundle"
  target/debug/mtor-cert verify "$out/image-bundle.tar.gz"
elif [ "${MTOR_REQUIRE_DOCKER:-0}" = 1 ]; then
  echo "image $image missing although MTOR_REQUIRE_DOCKER=1" >&2
  exit 1
else
  echo "SKIPPED: certifying $image: no container engine or no image"
fi

step "self-certification: the harness against the reference realm's seeded defects"
# The realm built with --features defects (debug only; the feature refuses release builds), kept
# under its own name. The clean realm runs three times with one seed (identical verdicts, no
# false alarm); each defect of ci/defect-matrix.toml once: exactly its mapped cases must fail.
# Profile `fast` runs each defect against its own family's cases and the cases it is mapped to;
# `ci/self-certify.py --profile full` runs the whole plan per defect (docs/self-certification.md).
cargo build -p mtor-realm --features defects --locked
cp target/debug/mtor-realm target/debug/mtor-realm-defects
python3 ci/self-certify.py --realm target/debug/mtor-realm-defects --profile fast \
  --doc target/self-certification.md
# Put the clean realm back beside mtor-cert (cargo keeps both builds: this only re-links it).
cargo build -p mtor-realm --locked
