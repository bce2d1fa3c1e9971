#!/usr/bin/env bash
# Builds the reference realm's container image `mtor-realm:<version>`: a static release binary
# (glibc with crt-static: no extra toolchain) in a FROM-scratch image that runs as uid 10001 and
# probes its own health. Nothing is pulled, so it builds offline.
#
#   ci/build-images.sh              build the binary and the image
#   ci/build-images.sh --if-engine  the same, but exit 0 with a SKIPPED line when no engine answers
#   MTOR_IMAGE=NAME:TAG ci/build-images.sh   another tag (default mtor-realm:<workspace version>)
#
# The static build has its own target dir (target/image): RUSTFLAGS differ from a normal build,
# and a separate dir neither invalidates nor locks the workspace's ordinary build.
set -euo pipefail
cd "$(dirname "$0")/.."

if_engine=0
case "${1:-}" in
  --if-engine) if_engine=1 ;;
  "") ;;
  *) echo "usage: $0 [--if-engine]" >&2; exit 3 ;;
esac

docker_cli="${MTOR_DOCKER:-docker}"
if ! engine="$(timeout 20 "$docker_cli" version --format '{{.Server.Version}}' 2>&1)"; then
  why="$(printf '%s' "$engine" | tr '\n' ' ' | sed 's/^ *//; s/ *$//')"
  if [ "$if_engine" = 1 ] && [ "${MTOR_REQUIRE_DOCKER:-0}" != 1 ]; then
    echo "SKIPPED: image build: no container engine reachable through '$docker_cli' ($why)"
    exit 0
  fi
  echo "build-images: no container engine reachable through '$docker_cli': $why" >&2
  exit 3
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
image="${MTOR_IMAGE:-mtor-realm:$version}"
host="$(rustc -vV | sed -n 's/^host: //p')"
case "$host" in
  *-linux-gnu) ;;
  *) echo "build-images: host $host: the static build expects a *-linux-gnu toolchain" >&2; exit 3 ;;
esac

echo "== static release build of mtor-realm for $host (target/image)"
# --target keeps RUSTFLAGS off build scripts and proc-macros, which must stay dynamic host code.
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/image \
  cargo build --release --locked --target "$host" -p mtor-realm --bin mtor-realm
bin="target/image/$host/release/mtor-realm"

# A FROM-scratch image has no loader: refuse a binary that would need one.
if readelf -l "$bin" 2>/dev/null | grep -q 'INTERP'; then
  echo "build-images: $bin is dynamically linked; it cannot run FROM scratch" >&2
  exit 4
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/data" "$ctx/tmp"
# Empty directories are copied as such by the classic builder; a marker keeps them non-empty for
# builders that would drop them.
touch "$ctx/data/.keep" "$ctx/tmp/.keep"
# Symbols are stripped from the copy (binutils), not by rustc, so RUSTFLAGS stay the same and
# the static build stays incremental.
if command -v strip >/dev/null; then strip -o "$ctx/mtor-realm" "$bin"; else cp "$bin" "$ctx/mtor-realm"; fi
cp ci/images/realm.Dockerfile "$ctx/Dockerfile"

echo "== docker build $image (engine $engine)"
# The classic builder: FROM scratch needs no BuildKit, and buildx may not be installed.
DOCKER_BUILDKIT=0 "$docker_cli" build --quiet --build-arg "VERSION=$version" -t "$image" "$ctx" >/dev/null
size="$("$docker_cli" image inspect "$image" --format '{{.Size}}')"
echo "built $image: $((size / 1024)) KiB, user $("$docker_cli" image inspect "$image" --format '{{.Config.User}}')"
