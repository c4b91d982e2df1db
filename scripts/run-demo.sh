#!/usr/bin/env bash
# meshguard demo (`make run`): three mg-upstream servers behind Envoy with the
# meshguard filter, a short narrated scenario, then everything keeps running
# for you to play with until Ctrl-C. Nothing is left running afterwards.
#
# Inputs (make run sets them; the defaults work after `make build`):
#   MESHGUARD_WASM   the module        (default: target/wasm32-wasip1/release/meshguard[.opt].wasm)
#   MESHGUARD_ENVOY  the Envoy binary  (default: scripts/ensure-envoy.sh)
#   MG_UPSTREAM      mg-upstream       (default: target/debug/mg-upstream, built if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$ROOT/.run/demo"
ENVOY_PORT=10000
ADMIN_PORT=9901
UP_PORTS=(18081 18082 18083)
UP_ADMIN=(19081 19082 19083)
NAMES=(u1 u2 u3)
URL="http://127.0.0.1:$ENVOY_PORT/"
RATE=50
# Like the tests' configuration, but the ejection outlasts the "u2 is broken"
# scene so the story is not interrupted by u2's (failing) return.
# The status endpoint (loopback only, by default) feeds the live table.
PLUGIN_CONFIG='{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"10s","maxEjectionTime":"60s","warmupDuration":"5s"},"status":{"enabled":true,"useRemoteAddress":true}}'
STATUS_URL="http://127.0.0.1:$ENVOY_PORT/meshguard/status"

if [[ -t 1 ]]; then
    B=$'\e[1m' DIM=$'\e[2m' RED=$'\e[31m' GRN=$'\e[32m' YEL=$'\e[33m' CYA=$'\e[36m' RST=$'\e[0m'
else
    B='' DIM='' RED='' GRN='' YEL='' CYA='' RST=''
fi
say() { printf '%s\n' "$*"; }
title() { printf '\n%s== %s ==%s\n' "$B$CYA" "$*" "$RST"; }
die() { printf '%serror:%s %s\n' "$RED$B" "$RST" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
if ! command -v curl >/dev/null; then
    command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] || die "curl is required (apt-get install curl)"
    say "installing curl..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
# The live table reads meshguard's status endpoint (JSON) with python3, or
# with jq where there is no python3.
if command -v python3 >/dev/null; then
    JSON_TOOL=python3
else
    if ! command -v jq >/dev/null; then
        command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] || die "python3 or jq is required (apt-get install jq)"
        say "installing jq..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
    fi
    JSON_TOOL=jq
fi
# --rate (curl >= 7.84) spaces the requests of one curl run evenly.
RATE_OPT=()
curl --help all 2>/dev/null | grep -q -- '--rate' && RATE_OPT=(--rate "$RATE/s")

if [[ -z "${MESHGUARD_WASM:-}" ]]; then
    MESHGUARD_WASM="$ROOT/target/wasm32-wasip1/release/meshguard.opt.wasm"
    [[ -f "$MESHGUARD_WASM" ]] || MESHGUARD_WASM="$ROOT/target/wasm32-wasip1/release/meshguard.wasm"
fi
[[ -f "$MESHGUARD_WASM" ]] || die "no meshguard module at $MESHGUARD_WASM (run: make run)"
MESHGUARD_ENVOY="${MESHGUARD_ENVOY:-$("$ROOT/scripts/ensure-envoy.sh")}"
MG_UPSTREAM="${MG_UPSTREAM:-$ROOT/target/debug/mg-upstream}"
if [[ ! -x "$MG_UPSTREAM" ]]; then
    (cd "$ROOT" && cargo build -q -p host-tests --bin mg-upstream)
fi

for p in "$ENVOY_PORT" "$ADMIN_PORT" "${UP_PORTS[@]}" "${UP_ADMIN[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is already in use (an earlier demo still running?)"
    fi
done

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    ((${#PIDS[@]})) || return 0
    printf '\n%sstopping Envoy and the upstreams...%s\n' "$DIM" "$RST"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    # Envoy needs about a second; after 5 s nothing is waited for any more.
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
# Ctrl-C is how the demo is meant to end: not an error for make.
trap 'exit 0' INT
trap 'exit 143' TERM

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"

wait_http() { # url what
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$2 did not come up (logs in $RUN_DIR)"
}

title "Starting"
for i in 0 1 2; do
    # setsid: Ctrl-C reaches only this script, whose trap then stops the
    # children in order (otherwise they die with it and look like crashes).
    setsid "$MG_UPSTREAM" --name "${NAMES[$i]}" --listen "127.0.0.1:${UP_PORTS[$i]}" \
        --admin "127.0.0.1:${UP_ADMIN[$i]}" >/dev/null 2>"$RUN_DIR/${NAMES[$i]}.log" &
    PIDS+=($!)
done
for i in 0 1 2; do
    wait_http "http://127.0.0.1:${UP_ADMIN[$i]}/stats" "mg-upstream ${NAMES[$i]}"
    say "  upstream ${NAMES[$i]}  data 127.0.0.1:${UP_PORTS[$i]}  admin 127.0.0.1:${UP_ADMIN[$i]}"
done

ADMIN_PORT=$ADMIN_PORT LISTEN_PORT=$ENVOY_PORT \
    UPSTREAM1_PORT=${UP_PORTS[0]} UPSTREAM2_PORT=${UP_PORTS[1]} UPSTREAM3_PORT=${UP_PORTS[2]} \
    WASM_PATH="$MESHGUARD_WASM" PLUGIN_CONFIG="$PLUGIN_CONFIG" \
    "$ROOT/scripts/render-envoy-config.sh" >"$RUN_DIR/envoy.yaml"
setsid "$MESHGUARD_ENVOY" -c "$RUN_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 \
    --file-flush-interval-msec 200 -l info --log-path "$RUN_DIR/envoy.log" \
    >/dev/null 2>"$RUN_DIR/envoy.stderr" &
PIDS+=($!)
ENVOY_PID=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" && break
    kill -0 "$ENVOY_PID" 2>/dev/null || { tail -n 20 "$RUN_DIR/envoy.log" >&2; die "Envoy exited during startup"; }
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" || die "Envoy not ready (log: $RUN_DIR/envoy.log)"
say "  envoy      listener 127.0.0.1:$ENVOY_PORT  admin 127.0.0.1:$ADMIN_PORT"
say "  meshguard  $(basename "$MESHGUARD_WASM")  config $PLUGIN_CONFIG"

# ---------------------------------------------------------------- traffic
# One curl run sends one second of traffic; `connection: close` makes every
# request a new connection, spread over Envoy's workers like real clients.
# Prints "code upstream" per request ("envoy" for Envoy's own replies).
fire() {
    local urls=()
    for ((i = 0; i < RATE; i++)); do urls+=("$URL"); done
    curl -s "${RATE_OPT[@]}" --max-time 10 -H 'connection: close' -w ' %{http_code}\n' "${urls[@]}" 2>/dev/null |
        awk '{ up = "envoy"; if (match($0, /"upstream":"[^"]*"/)) up = substr($0, RSTART + 12, RLENGTH - 13); print $NF, up }'
}

bar() { # percent -> bar of 8 cells
    local n=$(( ($1 * 8 + 50) / 100 )) s=''
    for ((j = 0; j < n; j++)); do s+='█'; done
    for ((j = n; j < 8; j++)); do s+='·'; done
    printf '%s' "$s"
}

# Host states and steering weights, as meshguard reports them on its status
# endpoint: services[].hosts[] with address, state, weightPercent. Only hosts
# with failures on record are listed: any other host is Healthy at full weight.
declare -A STATE=() WEIGHT=() ADDR_NAME=()
for i in 0 1 2; do
    STATE[${NAMES[$i]}]=Healthy
    WEIGHT[${NAMES[$i]}]=100
    ADDR_NAME[127.0.0.1:${UP_PORTS[$i]}]=${NAMES[$i]}
done
# Prints "address state weightPercent" per host of the demo cluster.
status_hosts() {
    local json
    json=$(curl -s --max-time 2 "$STATUS_URL") || return 0
    if [[ $JSON_TOOL == python3 ]]; then
        python3 -c '
import json, sys
try:
    doc = json.loads(sys.argv[1])
except ValueError:
    sys.exit(0)
print("- ok 0")
for service in doc.get("services", []):
    if service.get("service") == "demo":
        for h in service.get("hosts", []):
            print(h.get("address", "?"), h.get("state", "?"), int(h.get("weightPercent", 0)))
' "$json"
    else
        jq -r '"- ok 0", (.services[]? | select(.service == "demo") | .hosts[]? | "\(.address) \(.state) \(.weightPercent)")' \
            <<<"$json" 2>/dev/null || true
    fi
}
poll_status() {
    local addr st wt name
    while read -r addr st wt; do
        if [[ $addr == - ]]; then
            # A fresh answer: hosts it does not list are Healthy.
            for name in "${NAMES[@]}"; do STATE[$name]=Healthy; WEIGHT[$name]=100; done
            continue
        fi
        name=${ADDR_NAME[$addr]:-}
        [[ -n $name ]] || continue
        STATE[$name]=$st
        WEIGHT[$name]=$wt
    done < <(status_hosts)
}
TRANSITIONS_SEEN=0
state_color() {
    case "$1" in
        Healthy) printf '%s' "$GRN" ;;
        Degraded | WarmingUp) printf '%s' "$YEL" ;;
        *) printf '%s' "$RED" ;;
    esac
}
# Prints the transitions logged since the last call (one line each), for
# the narration; the table's states come from the status endpoint. Envoy
# flushes its log every 200 ms.
poll_transitions() {
    local lines=() l name
    mapfile -t lines < <(grep -E 'meshguard: .* host [0-9.]+:[0-9]+: [A-Za-z]+ -> [A-Za-z]+: ' "$RUN_DIR/envoy.log" 2>/dev/null || true)
    for ((k = TRANSITIONS_SEEN; k < ${#lines[@]}; k++)); do
        l=${lines[$k]}
        [[ $l =~ host\ ([0-9.]+:[0-9]+):\ ([A-Za-z]+)\ -\>\ ([A-Za-z]+):\ (.*)$ ]] || continue
        name=${ADDR_NAME[${BASH_REMATCH[1]}]:-${BASH_REMATCH[1]}}
        printf '        %s» meshguard: %s %s -> %s%s%s  %s%s\n' "$B" "$name" "${BASH_REMATCH[2]}" \
            "$(state_color "${BASH_REMATCH[3]}")" "${BASH_REMATCH[3]}" "$RST$DIM" "${BASH_REMATCH[4]}" "$RST"
    done
    TRANSITIONS_SEEN=${#lines[@]}
}

table_header() {
    printf '  %s%5s  %-10s' "$DIM" "time" "clients"
    for name in "${NAMES[@]}"; do printf ' │ %-28s' "$name  state  weight  share"; done
    printf '%s\n' "$RST"
}

SECOND=0
U2_SHARE=0
# Sends one second of traffic, then prints what meshguard logged meanwhile
# and one table row: client outcome, then each upstream's state and share.
second() {
    local start=$EPOCHREALTIME out total ok line
    out="$(fire)"
    total=$(grep -c . <<<"$out" || true)
    ok=$(grep -c '^200 ' <<<"$out" || true)
    ((total > 0)) || total=1
    local okc="$GRN"
    ((ok < total)) && okc="$RED"
    sleep 0.25 # let Envoy flush this second's log lines
    poll_transitions
    poll_status
    SECOND=$((SECOND + 1))
    line=$(printf '  %s%4ds%s  %s%3d/%-3d ok%s' "$DIM" "$SECOND" "$RST" "$okc" "$ok" "$total" "$RST")
    for name in "${NAMES[@]}"; do
        local n pct st=${STATE[$name]} wt=${WEIGHT[$name]}
        n=$(grep -c " $name\$" <<<"$out" || true)
        pct=$(( n * 100 / total ))
        [[ $name == u2 ]] && U2_SHARE=$pct
        line+=$(printf ' │ %s%-9s%s %s%3d%%%s %s %3d%%' "$(state_color "$st")" "$st" "$RST" "$DIM" "$wt" "$RST" "$(bar "$pct")" "$pct")
    done
    printf '%s\n' "$line"
    # Without --rate curl sends as fast as it can: pad to a full second.
    local spent
    spent=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { d = 1 - (b - a); if (d > 0) printf "%.3f", d; else print 0 }')
    sleep "$spent"
}

set_behaviour() { # index json
    curl -sf -X PUT "http://127.0.0.1:${UP_ADMIN[$1]}/behaviour" -d "$2" >/dev/null ||
        die "cannot change ${NAMES[$1]}'s behaviour"
}

title "1. Normal traffic"
say "Clients send $RATE requests/s through Envoy; round robin gives each upstream about a third."
say "Each row is one second: client answers, then every upstream's state and steering weight"
say "(from meshguard's status endpoint, $STATUS_URL) and its share of the requests."
say "meshguard's decisions appear as » lines (from Envoy's log) when they happen."
table_header
for _ in 1 2 3; do second; done

title "2. u2 starts failing"
say "u2 now answers ${RED}503${RST} to every request. meshguard sees the failures in live traffic,"
say "marks u2 unhealthy and steers requests to u1 and u3 (x-meshguard-upstream)."
set_behaviour 1 '{"status":503}'
table_header
for _ in 1 2 3 4 5 6; do second; done

title "3. u2 recovers"
say "u2 answers 200 again. It stays ejected until its ejection time is over, then comes back"
say "through a warm-up: a small share first, rising to a full third."
set_behaviour 1 '{}'
table_header
returned=-1 steady=0
for _ in $(seq 24); do
    second
    if ((returned < 0 && U2_SHARE > 0)); then returned=$SECOND; fi
    if ((returned >= 0 && U2_SHARE >= 25)); then steady=$((steady + 1)); else steady=0; fi
    ((steady >= 3)) && [[ ${STATE[u2]} == Healthy ]] && break
done
((steady >= 3)) || say "  ${YEL}(u2 did not get back to a full share within the demo; see the log below)${RST}"

title "What meshguard logged"
sleep 0.3 # Envoy flushes its log every 200 ms
if grep -q 'meshguard' "$RUN_DIR/envoy.log"; then
    # "[date time][tid][level][wasm] [source] wasm log <plugin ids>: msg" -> "time level msg"
    grep 'meshguard' "$RUN_DIR/envoy.log" |
        sed -E 's/^\[[0-9-]+ ([0-9:.]+)\]\[[0-9]+\]\[([a-z]+)\]\[[a-z]+\] \[[^]]+\] (wasm log [^:]*: )?/\1 \2 /' |
        tail -n 12 | sed 's/^/  /'
else
    say "  (no meshguard lines in $RUN_DIR/envoy.log)"
fi

title "Your turn"
say "Everything keeps running. In another terminal:"
say ""
try() { printf '  %s%-72s%s %s%s%s\n' "$B" "$1" "$RST" "$DIM" "$2" "$RST"; }
try "curl -s localhost:$ENVOY_PORT/" "one request through Envoy"
try "curl -s localhost:$ENVOY_PORT/meshguard/status" "meshguard's view of every host (JSON)"
try "for i in \$(seq 60); do curl -s localhost:$ENVOY_PORT/; echo; done" "some traffic"
try "curl -s -XPUT localhost:19082/behaviour -d '{\"status\":503,\"errorPercent\":35}'" "grey failure on u2"
try "curl -s -XPUT localhost:19083/behaviour -d '{\"latencyMs\":300}'" "slow u3"
try "curl -s -XPUT localhost:19081/behaviour -d '{\"refuse\":true}'" "u1 down"
try "curl -s -XPUT localhost:19082/behaviour -d '{}'" "heal u2"
try "curl -s localhost:19082/stats" "what u2 received"
try "curl -s 'localhost:$ADMIN_PORT/stats?filter=cluster.demo'" "Envoy's counters"
try "tail -f $RUN_DIR/envoy.log | grep meshguard" "meshguard's decisions"
say ""
say "Behaviour fields (all optional, missing = default): status, errorPercent, latencyMs,"
say "reset, refuse, grpcStatus. Logs: $RUN_DIR"
say ""
say "${B}Press Ctrl-C to stop everything.${RST}"

while sleep 1; do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            what=envoy
            ((i < 3)) && what="mg-upstream ${NAMES[$i]}"
            die "$what exited unexpectedly (logs in $RUN_DIR)"
        fi
    done
done
