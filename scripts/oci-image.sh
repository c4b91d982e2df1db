#!/usr/bin/env bash
# Builds the OCI image of the module for Istio's WasmPlugin, from local files
# only (no registry is needed or used):
#
#   meshguard/meshguard-wasm:<crate version>   images/wasm-plugin/Dockerfile
#
# FROM scratch, one layer holding the shipped module as /plugin.wasm, which is
# where Istio's agent looks for it. Then checks the image: exactly one layer,
# holding exactly plugin.wasm, with the sha256 of the built module.
#
# Usage: scripts/oci-image.sh [--check-only]
# Inputs (optional):
#   MESHGUARD_WASM        the module (default target/wasm32-wasip1/release/meshguard.opt.wasm)
#   MESHGUARD_OCI_IMAGE   repository name (default meshguard/meshguard-wasm)
# Output: `image=<name:tag>` and `module_sha256=<hex>` on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'oci-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

MODULE="${MESHGUARD_WASM:-$ROOT/target/wasm32-wasip1/release/meshguard.opt.wasm}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1)"
IMAGE="${MESHGUARD_OCI_IMAGE:-meshguard/meshguard-wasm}:$VERSION"
[[ -n "$VERSION" ]] || die "cannot read the crate version from Cargo.toml"
[[ -f "$MODULE" ]] || die "$MODULE does not exist: run \`make build\` first"
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon"

MODULE_SHA="$(sha256sum "$MODULE" | cut -d' ' -f1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ "${1:-}" != "--check-only" ]]; then
    mkdir "$work/ctx"
    cp "$ROOT/images/wasm-plugin/Dockerfile" "$work/ctx/Dockerfile"
    cp "$MODULE" "$work/ctx/plugin.wasm"
    log "building $IMAGE from ${MODULE#"$ROOT"/}"
    docker build -q --build-arg "VERSION=$VERSION" -t "$IMAGE" "$work/ctx" >&2
fi

# The check: `docker save` the image and look inside its layers.
mkdir "$work/saved"
docker save "$IMAGE" | tar -x -C "$work/saved"
python3 - "$work/saved" "$MODULE_SHA" "$IMAGE" <<'PY'
import hashlib, io, json, sys, tarfile, gzip
root, want, image = sys.argv[1], sys.argv[2], sys.argv[3]
manifest = json.load(open(f"{root}/manifest.json"))
layers = manifest[0]["Layers"]
if len(layers) != 1:
    sys.exit(f"oci-image: error: {image} has {len(layers)} layers, expected exactly 1")
data = open(f"{root}/{layers[0]}", "rb").read()
if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    members = [m for m in t.getmembers() if m.name.strip("./") != ""]
    names = [m.name.lstrip("./") for m in members]
    if names != ["plugin.wasm"]:
        sys.exit(f"oci-image: error: {image} holds {names}, expected exactly ['plugin.wasm']")
    got = hashlib.sha256(t.extractfile(members[0]).read()).hexdigest()
if got != want:
    sys.exit(f"oci-image: error: /plugin.wasm in {image} has sha256 {got}, the module has {want}")
PY
log "ok: $IMAGE holds exactly /plugin.wasm, sha256 $MODULE_SHA"
echo "image=$IMAGE"
echo "module_sha256=$MODULE_SHA"
