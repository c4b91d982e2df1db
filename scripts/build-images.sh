#!/usr/bin/env bash
# Builds meshguard's container images from local files only (no registry is
# needed or used):
#
#   meshguard/envoy:<envoy version>        images/envoy/Dockerfile
#   meshguard/mg-upstream:<crate version>  images/mg-upstream/Dockerfile
#
# Both are FROM scratch: the script stages a root file system with the binary
# and the glibc libraries `ldd` says it links, then runs `docker build` on it.
# An image is rebuilt only when its inputs changed: the sha256 of the binary,
# the Dockerfile and this script is stored in the image label
# org.meshguard.inputs and compared on every run (a few hundred ms).
#
# Usage: scripts/build-images.sh [--force]
# Inputs (optional):
#   MESHGUARD_ENVOY  Envoy binary      (default: scripts/ensure-envoy.sh)
#   MG_UPSTREAM      mg-upstream binary (default: target/debug/mg-upstream,
#                                        built with cargo if missing)
# Output: one line per image on stdout, `envoy=<tag>` and `mg-upstream=<tag>`;
# progress goes to stderr. `make images` and the test harness both run this.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed (the container tests and images need Docker)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running? may this user use it?)"

ENVOY_VERSION="$(sed -n 's/^ENVOY_VERSION="\(.*\)"$/\1/p' "$ROOT/scripts/ensure-envoy.sh")"
CRATE_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1)"
[[ -n "$ENVOY_VERSION" && -n "$CRATE_VERSION" ]] || die "cannot read the Envoy or crate version"

MESHGUARD_ENVOY="${MESHGUARD_ENVOY:-$("$ROOT/scripts/ensure-envoy.sh")}"
MG_UPSTREAM="${MG_UPSTREAM:-$ROOT/target/debug/mg-upstream}"
if [[ ! -x "$MG_UPSTREAM" ]]; then
    log "building mg-upstream"
    (cd "$ROOT" && cargo build -q -p host-tests --bin mg-upstream >&2)
fi
[[ -x "$MESHGUARD_ENVOY" ]] || die "no Envoy binary at $MESHGUARD_ENVOY"
[[ -x "$MG_UPSTREAM" ]] || die "no mg-upstream binary at $MG_UPSTREAM"

# Copies the shared libraries `ldd` lists for $1 into the root file system $2,
# at the paths the loader looks them up (symlinks resolved to their content).
copy_libs() {
    local bin="$1" rootfs="$2" lib
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done < <(ldd "$bin" | awk '/=> \// { print $3; next } /^[[:space:]]*\// { print $1 }')
}

# build NAME TAG BINARY INSTALL_AS STRIP(0|1)
build() {
    local name="$1" tag="$2" bin="$3" dest="$4" strip="$5"
    local dockerfile="$ROOT/images/$name/Dockerfile"
    local inputs current old_id ctx
    inputs="$(cat "$bin" "$dockerfile" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-64)"
    current="$(docker image inspect -f '{{ index .Config.Labels "org.meshguard.inputs" }}' "$tag" 2>/dev/null || true)"
    if [[ $force -eq 0 && "$current" == "$inputs" ]]; then
        log "$tag is up to date"
        printf '%s=%s\n' "$name" "$tag"
        return
    fi
    old_id="$(docker image inspect -f '{{ .Id }}' "$tag" 2>/dev/null || true)"
    log "building $tag from $bin"
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/meshguard-image-$name.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: ctx is local
    trap "rm -rf '$ctx'" RETURN
    cp "$dockerfile" "$ctx/Dockerfile"
    mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp"
    chmod 1777 "$ctx/rootfs/tmp"
    if [[ $strip -eq 1 ]]; then
        strip -o "$ctx/rootfs$dest" "$bin"
    else
        cp "$bin" "$ctx/rootfs$dest"
    fi
    copy_libs "$bin" "$ctx/rootfs"
    docker build -q --label "org.meshguard.inputs=$inputs" -t "$tag" "$ctx" >/dev/null
    # The previous image under this tag is now unnamed: do not let rebuilds pile up.
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{ .Id }}' "$tag")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    log "$tag built ($(docker image inspect -f '{{ .Size }}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
    printf '%s=%s\n' "$name" "$tag"
}

build envoy "meshguard/envoy:$ENVOY_VERSION" "$MESHGUARD_ENVOY" /usr/local/bin/envoy 0
build mg-upstream "meshguard/mg-upstream:$CRATE_VERSION" "$MG_UPSTREAM" /usr/local/bin/mg-upstream 1
