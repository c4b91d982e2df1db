#!/usr/bin/env bash
# Renders envoy/demo.yaml.tmpl to stdout.
# Usage: render-envoy-config.sh [--no-wasm]   with the template variables in the
# environment (ADMIN_PORT LISTEN_PORT UPSTREAM{1,2,3}_PORT WASM_PATH PLUGIN_CONFIG;
# FALLBACK_PORT is optional and defaults to UPSTREAM3_PORT).
# --no-wasm drops the meshguard filter (WASM_PATH/PLUGIN_CONFIG then not needed).
# Pure bash substitution on purpose: paths and JSON contain / & \ that trip sed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE="${TEMPLATE:-$ROOT/envoy/demo.yaml.tmpl}"
no_wasm=0
[[ "${1:-}" == "--no-wasm" ]] && no_wasm=1

# The `fallback` cluster (circuit breaker fallback mode) needs a host; the
# demo has no separate one, so it reuses u3 unless told otherwise.
FALLBACK_PORT="${FALLBACK_PORT:-${UPSTREAM3_PORT:-}}"
vars=(ADMIN_PORT LISTEN_PORT UPSTREAM1_PORT UPSTREAM2_PORT UPSTREAM3_PORT FALLBACK_PORT)
if [[ $no_wasm -eq 0 ]]; then
    vars+=(WASM_PATH PLUGIN_CONFIG)
    # The config sits in a single-quoted YAML scalar: '' is YAML's escaped '.
    PLUGIN_CONFIG="${PLUGIN_CONFIG//\'/\'\'}"
fi

out=""
skipping=0
while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ $no_wasm -eq 1 ]]; then
        [[ "$line" =~ ^[[:space:]]*#\ BEGIN\ meshguard ]] && { skipping=1; continue; }
        [[ "$line" =~ ^[[:space:]]*#\ END\ meshguard ]] && { skipping=0; continue; }
        [[ $skipping -eq 1 ]] && continue
    fi
    out+="$line"$'\n'
done <"$TEMPLATE"

for v in "${vars[@]}"; do
    [[ -n "${!v:-}" ]] || { echo "render-envoy-config: $v is not set" >&2; exit 1; }
    out="${out//"\${$v}"/${!v}}"
done
# Comments in the header mention ${NAME} too; only a leftover outside a comment is an error.
if grep -v '^\s*#' <<<"$out" | grep -q '\${'; then
    echo "render-envoy-config: unsubstituted variable left in the template:" >&2
    grep -v '^\s*#' <<<"$out" | grep '\${' >&2
    exit 1
fi
printf '%s' "$out"
