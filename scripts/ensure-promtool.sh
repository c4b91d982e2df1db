#!/usr/bin/env bash
# Prints the absolute path of a promtool (Prometheus' rule checker and
# unit-test runner), installing one when none is on PATH: Debian's
# `prometheus` package is downloaded (not installed: no service is started,
# no dependency pulled) and unpacked into target/promtool/, where later
# calls find it. host-tests/tests/prometheus_rules.rs calls this; so can a
# user: `$(scripts/ensure-promtool.sh) check rules istio/prometheus/meshguard-alerts.yaml`.
# Idempotent and quiet when already there: callers capture stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/target/promtool"
LOCAL="$DEST/usr/bin/promtool"

# MESHGUARD_PROMTOOL_LOCAL=1 ignores a promtool on PATH (to try the install).
if [[ -z "${MESHGUARD_PROMTOOL_LOCAL:-}" ]] && command -v promtool >/dev/null; then
    readlink -f "$(command -v promtool)"
    exit 0
fi
if [[ -x "$LOCAL" ]]; then
    echo "$LOCAL"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    echo "ensure-promtool: promtool is missing and this is not a Debian-like system: install Prometheus' promtool and put it on PATH" >&2
    exit 1
}
mkdir -p "$ROOT/target"
# One installer at a time (parallel test runs); the loser finds it done.
exec 9>"$ROOT/target/.promtool.lock"
flock 9
if [[ -x "$LOCAL" ]]; then
    echo "$LOCAL"
    exit 0
fi

# A fresh machine may have empty package lists: `apt-get download` then
# finds no candidate.
# (Output captured first: grep -q closing the pipe early would fail it
# under pipefail.)
policy="$(apt-cache policy prometheus 2>/dev/null || true)"
if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "ensure-promtool: apt-get update (no candidate for prometheus yet)" >&2
        apt-get update -qq >&2
    else
        echo "ensure-promtool: no package list knows prometheus; run apt-get update as root, or install promtool" >&2
        exit 1
    fi
fi

WORK="$(mktemp -d "$ROOT/target/.promtool.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
echo "ensure-promtool: downloading Debian's prometheus package for promtool into $DEST" >&2
# apt's sandbox user may not write here; the download is then done as the
# caller, which is what we want anyway.
(cd "$WORK" && apt-get download -qq prometheus 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
DEB="$(ls "$WORK"/prometheus_*.deb 2>/dev/null | head -n1)"
[[ -n "$DEB" ]] || { echo "ensure-promtool: apt-get download prometheus produced no package" >&2; exit 1; }
dpkg -x "$DEB" "$WORK/root"
[[ -x "$WORK/root/usr/bin/promtool" ]] || { echo "ensure-promtool: no usr/bin/promtool in $DEB" >&2; exit 1; }
"$WORK/root/usr/bin/promtool" --version >/dev/null
rm -rf "$DEST"
mkdir -p "$DEST/usr/bin"
mv "$WORK/root/usr/bin/promtool" "$LOCAL"
echo "$LOCAL"
