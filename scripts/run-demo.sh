#!/usr/bin/env bash
# meshguard demo (`make run`, docs/demo.md): three mg-upstream servers behind
# one Envoy with two listeners over the same upstreams: one with meshguard,
# one with Envoy's own outlier detection ("Envoy alone"). mg-load sends the
# same traffic to both; short narrated scenes (hard failure, grey failure,
# slow host, whole service down) show both columns side by side, measured;
# then a live table runs until Ctrl-C and reacts to the upstreams' behaviour
# endpoints. Nothing is left running afterwards, however the script ends.
#
#   scripts/run-demo.sh           the demo
#   scripts/run-demo.sh --stop    stop what a crashed or killed demo left (make stop)
#
# Inputs (make run sets them):
#   MESHGUARD_WASM   the module        (default: target/wasm32-wasip1/release/meshguard.opt.wasm)
#   MESHGUARD_ENVOY  the Envoy binary  (default: scripts/ensure-envoy.sh)
#   MG_UPSTREAM      mg-upstream       (default: target/debug/mg-upstream)
#   MG_LOAD          mg-load           (default: target/debug/mg-load)
#   MG_ENVOY_CONFIG  mg-envoy-config, which renders envoy/demo.yaml.tmpl
#                    (default: target/debug/mg-envoy-config)
# Knobs (docs/demo.md):
#   MG_DEMO_FAST=1               short scenes and ejection times (the test uses it)
#   MG_DEMO_RATE=50              requests per second to each listener
#   MG_DEMO_LIVE_SECONDS=0       rows of the live table before stopping (0: until Ctrl-C)
#   MG_DEMO_SCENES="hard grey slow breaker"   which scenes, in this order ("" for none)
#   MG_DEMO_PORT=10000  MG_DEMO_ALONE_PORT=10001  MG_DEMO_ADMIN_PORT=9901
#   MG_DEMO_UPSTREAM_PORTS="18081 18082 18083"  MG_DEMO_UPSTREAM_ADMIN_PORTS="19081 19082 19083"
#   MG_DEMO_RUN_DIR=.run/demo    logs, rendered config, pid file
set -euo pipefail
# bash 5.2 would expand & in ${var/pattern/replacement}; the YAML is inserted verbatim.
shopt -u patsub_replacement 2>/dev/null || true

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${MG_DEMO_RUN_DIR:-$ROOT/.run/demo}"
PID_FILE="$RUN_DIR/pids"
ENVOY_PORT="${MG_DEMO_PORT:-10000}"
ALONE_PORT="${MG_DEMO_ALONE_PORT:-10001}"
ADMIN_PORT="${MG_DEMO_ADMIN_PORT:-9901}"
read -r -a UP_PORTS <<<"${MG_DEMO_UPSTREAM_PORTS:-18081 18082 18083}"
read -r -a UP_ADMIN <<<"${MG_DEMO_UPSTREAM_ADMIN_PORTS:-19081 19082 19083}"
NAMES=(u1 u2 u3)
RATE="${MG_DEMO_RATE:-50}"
FAST="${MG_DEMO_FAST:-0}"
LIVE_SECONDS="${MG_DEMO_LIVE_SECONDS:-0}"
SCENES="${MG_DEMO_SCENES-hard grey slow breaker}"

if [[ -t 1 ]]; then
    B=$'\e[1m' DIM=$'\e[2m' RED=$'\e[31m' GRN=$'\e[32m' YEL=$'\e[33m' CYA=$'\e[36m' RST=$'\e[0m'
else
    B='' DIM='' RED='' GRN='' YEL='' CYA='' RST=''
fi

# Every line of output goes through these. When stdout is gone (`make run |
# head -5`, or the `tee` of `make run | tee log` died with Ctrl-C) a write
# fails: that ends the demo quietly (exit 0, cleanup runs), instead of bash
# printing "write error" to a stderr that may be the same dead pipe.
say() { printf '%s\n' "$*" 2>/dev/null || stdout_gone; }
sayf() { # format args...
    # shellcheck disable=SC2059
    printf "$@" 2>/dev/null || stdout_gone
}
title() { sayf '\n%s== %s ==%s\n' "$B$CYA" "$*" "$RST"; }
# Errors go to stderr, and also to stdout when that is a file or pipe of
# its own (`make run | tee log` keeps the reason next to the table; with
# 2>&1 both are the same pipe and it is said once).
die() {
    printf '%serror:%s %s\n' "$RED$B" "$RST" "$*" >&2 2>/dev/null || true
    if [[ ! -t 1 && "$(readlink /proc/$$/fd/1 2>/dev/null)" != "$(readlink /proc/$$/fd/2 2>/dev/null)" ]]; then
        printf 'error: %s\n' "$*" 2>/dev/null || true
    fi
    exit 1
}
STDOUT_GONE=0
stdout_gone() {
    STDOUT_GONE=1
    exit 0
}

# ---------------------------------------------------------------- processes
# Every child runs in its own session (setsid): Ctrl-C reaches only this
# script, whose cleanup then stops each child's whole process group. PIDS
# holds their PIDs (= process group ids), $PID_FILE the same for `make stop`
# after a crash. The children also get PR_SET_PDEATHSIG (SIGTERM when this
# script dies, even by SIGKILL): mg-upstream and mg-load with --parent-pid,
# Envoy through setpriv when it is installed.
PIDS=()
PID_NAMES=()

# "PID NAME" per line; the script itself first, so `make stop` can let it
# clean up first.
record_pid() { # pid name
    PIDS+=("$1")
    PID_NAMES+=("$2")
    printf '%s %s\n' "$1" "$2" >>"$PID_FILE"
}

# Whether PID is alive and still the program NAME (pids are recycled).
is_ours() { # pid name
    local cmd
    [[ -r /proc/$1/cmdline ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    case "$2" in
        script) [[ $cmd == *run-demo.sh* ]] ;;
        envoy) [[ $cmd == *envoy* ]] ;;
        *) [[ $cmd == *mg-upstream* || $cmd == *mg-load* ]] ;;
    esac
}

# Stops process groups: SIGTERM, up to 5 s (Envoy needs about 1 s), then
# SIGKILL. Output only through `note`, which never fails.
note() { printf '%s\n' "$*" 2>/dev/null || true; }
# Whether PID runs: an exited child of ours stays a zombie until reaped,
# and kill -0 still finds it.
alive() { # pid
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}
stop_groups() { # pid...
    local pid alive
    (($#)) || return 0
    for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "$@"; do
            if alive "$pid"; then alive=1; fi
        done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}

CLEANED=0
cleanup() {
    local rc=$?
    # Nothing may interrupt the cleanup: a second Ctrl-C, and above all
    # SIGPIPE from writing to a dead pipe, which would kill bash before it
    # stopped anything.
    trap '' PIPE INT TERM HUP
    trap - EXIT
    set +e
    ((CLEANED)) && exit "$rc"
    CLEANED=1
    [[ -n ${LOAD_FD:-} ]] && exec {LOAD_FD}<&-
    if ((${#PIDS[@]})); then
        ((STDOUT_GONE)) || note "${DIM}stopping Envoy, mg-load and the upstreams...${RST}"
        stop_groups "${PIDS[@]}"
        wait 2>/dev/null
        rm -f "$PID_FILE"
    fi
    exit "$rc"
}

if [[ "${1:-}" == "--stop" ]]; then
    # make stop: whatever a demo that could not clean up left behind.
    [[ -f $PID_FILE ]] || { note "no demo running (no $PID_FILE)"; exit 0; }
    script_pids=() child_pids=()
    while read -r pid name; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        is_ours "$pid" "$name" || continue
        if [[ $name == script ]]; then script_pids+=("$pid"); else child_pids+=("$pid"); fi
    done <"$PID_FILE"
    if ((${#script_pids[@]})); then
        note "stopping the demo script (pid ${script_pids[*]}); it stops its children"
        kill -TERM "${script_pids[@]}" 2>/dev/null || true
        for _ in $(seq 70); do
            kill -0 "${script_pids[@]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${script_pids[@]}" 2>/dev/null || true
    fi
    left=()
    for pid in "${child_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); fi
    done
    if ((${#left[@]})); then
        note "stopping ${#left[@]} leftover process(es): ${left[*]}"
        stop_groups "${left[@]}"
    fi
    rm -f "$PID_FILE"
    note "demo stopped; nothing of it is running"
    exit 0
fi

# ---------------------------------------------------------------- prerequisites
command -v curl >/dev/null || die "curl is required (apt-get install curl)"
if [[ -z "${MESHGUARD_WASM:-}" ]]; then
    MESHGUARD_WASM="$ROOT/target/wasm32-wasip1/release/meshguard.opt.wasm"
    [[ -f "$MESHGUARD_WASM" ]] || MESHGUARD_WASM="$ROOT/target/wasm32-wasip1/release/meshguard.wasm"
fi
[[ -f "$MESHGUARD_WASM" ]] || die "no meshguard module at $MESHGUARD_WASM (run: make run)"
MESHGUARD_ENVOY="${MESHGUARD_ENVOY:-$("$ROOT/scripts/ensure-envoy.sh")}"
[[ -x "$MESHGUARD_ENVOY" ]] || die "no Envoy at $MESHGUARD_ENVOY (run: make run)"
MG_UPSTREAM="${MG_UPSTREAM:-$ROOT/target/debug/mg-upstream}"
MG_LOAD="${MG_LOAD:-$ROOT/target/debug/mg-load}"
MG_ENVOY_CONFIG="${MG_ENVOY_CONFIG:-$ROOT/target/debug/mg-envoy-config}"
for bin in "$MG_UPSTREAM" "$MG_LOAD" "$MG_ENVOY_CONFIG"; do
    [[ -x "$bin" ]] || die "no $(basename "$bin") at $bin (run: make run, which builds it)"
done
((${#UP_PORTS[@]} == 3 && ${#UP_ADMIN[@]} == 3)) ||
    die "MG_DEMO_UPSTREAM_PORTS and MG_DEMO_UPSTREAM_ADMIN_PORTS need three ports each"
# Older builds of mg-upstream lack --parent-pid; they still work, without it.
# (--help exits 2: its output is captured, not piped, because of pipefail.)
UP_PARENT=()
[[ $("$MG_UPSTREAM" --help 2>&1 || true) == *--parent-pid* ]] && UP_PARENT=(--parent-pid "$$")
SETPRIV=()
if command -v setpriv >/dev/null && [[ $(setpriv --help 2>&1 || true) == *--pdeathsig* ]]; then
    SETPRIV=(setpriv --pdeathsig TERM --)
fi

# ---------------------------------------------------------------- busy ports
# PID and command of the process listening on TCP port PORT (any address),
# from /proc: no ss or lsof needed. Empty if nobody listens; "?" if the
# holder is not visible to this user.
port_holder() { # port
    local hex inodes inode fd pid
    hex=$(printf '%04X' "$1")
    # /proc/net/tcp: local_address is ADDR:PORT in hex, st 0A is LISTEN.
    inodes=$(awk -v p="$hex" 'FNR > 1 && $4 == "0A" { split($2, a, ":"); if (a[2] == p) print $10 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u)
    [[ -n $inodes ]] || return 0
    for inode in $inodes; do
        fd=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" -print -quit 2>/dev/null || true)
        if [[ -n $fd ]]; then
            pid=${fd#/proc/}
            pid=${pid%%/*}
            printf '%s %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
            return 0
        fi
    done
    echo "?"
}
earlier_pids=()
[[ -f $PID_FILE ]] && while read -r pid name; do
    [[ $pid =~ ^[0-9]+$ ]] && is_ours "$pid" "$name" && earlier_pids+=("$pid")
done <"$PID_FILE"
for p in "$ENVOY_PORT" "$ALONE_PORT" "$ADMIN_PORT" "${UP_PORTS[@]}" "${UP_ADMIN[@]}"; do
    holder=$(port_holder "$p")
    [[ -n $holder ]] || continue
    hpid=${holder%% *}
    if [[ $holder == "?" ]]; then
        die "port $p is in use, by a process this user cannot see (try: sudo ss -ltnp 'sport = :$p'); or move the demo: MG_DEMO_PORT and friends (docs/demo.md)"
    fi
    msg="port $p is in use by pid $hpid ($(cut -d' ' -f2- <<<"$holder"))"
    if [[ " ${earlier_pids[*]} " == *" $hpid "* ]]; then
        die "$msg, from a \`make run\` of this checkout that is still running or was left running: Ctrl-C it, or run \`make stop\`"
    elif [[ $holder == *"$MESHGUARD_ENVOY"* || $holder == *mg-upstream* || $holder == *mg-load* || $holder == *run-demo.sh* ]]; then
        die "$msg, which looks like another meshguard demo or test: \`make stop\` stops a demo's; or move this one with MG_DEMO_PORT and friends (docs/demo.md)"
    else
        die "$msg: stop it, or move the demo with MG_DEMO_PORT and friends (docs/demo.md)"
    fi
done
if ((${#earlier_pids[@]})); then
    die "an earlier demo is still running (pids ${earlier_pids[*]}, from $PID_FILE): run \`make stop\`"
fi

# From here on, every way out runs cleanup. Ctrl-C is how the demo is meant
# to end: not an error for make. A closed stdout pipe also ends it quietly.
trap cleanup EXIT
trap 'exit 0' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'STDOUT_GONE=1; exit 0' PIPE

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
printf '%s script\n' "$$" >"$PID_FILE"

# ---------------------------------------------------------------- configuration
# Normal mode: times a person can follow; fast mode (the test): the same
# story in about half the time. meshguard and Envoy alone get the same
# ejection time, so neither wins by staying out longer.
if [[ $FAST == 1 ]]; then
    EJECT=3 WARMUP=2 OPEN=1 ALONE_INTERVAL=1
    T_NORMAL=2 T_HARD=4 T_GREY=5 T_SLOW=4 T_DOWN=4 T_BACK=10
else
    EJECT=5 WARMUP=6 OPEN=3 ALONE_INTERVAL=10
    T_NORMAL=4 T_HARD=8 T_GREY=12 T_SLOW=10 T_DOWN=8 T_BACK=25
fi
SLOW_MS=250
GREY_PERCENT=30
# meshguard: shipped defaults, except windows sized for 17 requests/s per
# host, short ejection and warm-up times, slow-call detection on (it is off
# by default: no threshold fits every service) and the status endpoint,
# which feeds the table.
PLUGIN_CONFIG='{"detection":{"windowSize":40,"minRequests":20,"slowCallThreshold":"100ms"},"ejection":{"baseEjectionTime":"'$EJECT's","maxEjectionTime":"60s","warmupDuration":"'$WARMUP's"},"circuitBreaker":{"openDuration":"'$OPEN's"},"status":{"enabled":true,"useRemoteAddress":true}}'
# Envoy alone: outlier detection as a user turns it on: Envoy's defaults
# (consecutive_5xx 5, interval 10 s, success rate needing 5 hosts: off
# here), max_ejection_percent 50 instead of 10 (10 % of 3 hosts ejects
# nothing, which is what Istio's default gives), the same ejection time as
# meshguard. No retries on either listener.
ALONE_OUTLIER="{ consecutive_5xx: 5, interval: ${ALONE_INTERVAL}s, base_ejection_time: ${EJECT}s, max_ejection_percent: 50 }"
STATUS_PATH=/meshguard/status

endpoints_yaml() {
    local p
    for p in "${UP_PORTS[@]}"; do
        printf '        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %s } } }\n' "$p"
    done
}
ALONE_LISTENER="  # Envoy alone (added by scripts/run-demo.sh): the same upstreams, Envoy's
  # own outlier detection, no meshguard: the demo's second column.
  - name: envoy_alone
    address:
      socket_address: { address: 127.0.0.1, port_value: $ALONE_PORT }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: envoy_alone
          codec_type: AUTO
          route_config:
            name: envoy_alone_routes
            virtual_hosts:
            - name: envoy_alone
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/\" }
                route: { cluster: envoy_alone }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"
ALONE_CLUSTER="  - name: envoy_alone
    type: STATIC
    connect_timeout: 1s
    outlier_detection: $ALONE_OUTLIER
    load_assignment:
      cluster_name: envoy_alone
      endpoints:
      - lb_endpoints:
$(endpoints_yaml)
    # Least request, as the meshguard side's fallback policy and Istio's default.
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.least_request
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest
"

# ---------------------------------------------------------------- start
wait_http() { # url what pid
    for _ in $(seq 100); do
        curl -sf -o /dev/null --max-time 1 "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup (log: $RUN_DIR)"
        sleep 0.1
    done
    die "$2 did not come up (logs in $RUN_DIR)"
}

title "Starting"
for i in 0 1 2; do
    setsid "$MG_UPSTREAM" --name "${NAMES[$i]}" --listen "127.0.0.1:${UP_PORTS[$i]}" \
        --admin "127.0.0.1:${UP_ADMIN[$i]}" "${UP_PARENT[@]}" </dev/null >/dev/null 2>"$RUN_DIR/${NAMES[$i]}.log" &
    record_pid $! "${NAMES[$i]}"
done
for i in 0 1 2; do
    wait_http "http://127.0.0.1:${UP_ADMIN[$i]}/stats" "mg-upstream ${NAMES[$i]}" "${PIDS[$i]}"
    say "  upstream ${NAMES[$i]}  data 127.0.0.1:${UP_PORTS[$i]}  admin (behaviour, stats) 127.0.0.1:${UP_ADMIN[$i]}"
done

yaml=$(ADMIN_PORT=$ADMIN_PORT LISTEN_PORT=$ENVOY_PORT \
    UPSTREAM1_PORT=${UP_PORTS[0]} UPSTREAM2_PORT=${UP_PORTS[1]} UPSTREAM3_PORT=${UP_PORTS[2]} \
    WASM_PATH="$MESHGUARD_WASM" PLUGIN_CONFIG="$PLUGIN_CONFIG" \
    "$MG_ENVOY_CONFIG")
[[ $yaml == *$'\n  listeners:\n'* && $yaml == *$'\n  clusters:\n'* ]] ||
    die "envoy/demo.yaml.tmpl has no '  listeners:' or '  clusters:' line to add Envoy alone to"
yaml=${yaml/$'\n  listeners:\n'/$'\n  listeners:\n'"$ALONE_LISTENER"}
yaml=${yaml/$'\n  clusters:\n'/$'\n  clusters:\n'"$ALONE_CLUSTER"}
# Envoy alone's ejections, as Envoy logs them (JSON lines), for the narration.
printf '%s\n\ncluster_manager:\n  outlier_detection:\n    event_log_path: "%s"\n' \
    "$yaml" "$RUN_DIR/outlier-events.log" >"$RUN_DIR/envoy.yaml"

setsid "${SETPRIV[@]}" "$MESHGUARD_ENVOY" -c "$RUN_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 \
    --file-flush-interval-msec 200 -l info --log-path "$RUN_DIR/envoy.log" \
    </dev/null >/dev/null 2>"$RUN_DIR/envoy.stderr" &
record_pid $! envoy
ENVOY_PID=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN_PORT/ready" && break
    if ! kill -0 "$ENVOY_PID" 2>/dev/null; then
        tail -n 20 "$RUN_DIR/envoy.log" "$RUN_DIR/envoy.stderr" >&2 2>/dev/null || true
        die "Envoy exited during startup (log: $RUN_DIR/envoy.log)"
    fi
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" || die "Envoy not ready (log: $RUN_DIR/envoy.log)"
say "  envoy      with meshguard 127.0.0.1:$ENVOY_PORT   Envoy alone 127.0.0.1:$ALONE_PORT   admin 127.0.0.1:$ADMIN_PORT"
say "  meshguard  $(basename "$MESHGUARD_WASM") $PLUGIN_CONFIG"
say "  Envoy alone: outlier_detection $ALONE_OUTLIER"

mkfifo "$RUN_DIR/load.fifo"
setsid "$MG_LOAD" --rate "$RATE" --status "http://127.0.0.1:$ENVOY_PORT$STATUS_PATH" --parent-pid "$$" \
    "mg=http://127.0.0.1:$ENVOY_PORT/" "alone=http://127.0.0.1:$ALONE_PORT/" \
    </dev/null >"$RUN_DIR/load.fifo" 2>"$RUN_DIR/load.log" &
record_pid $! mg-load
exec {LOAD_FD}<"$RUN_DIR/load.fifo"
say "  mg-load    $RATE requests/s to each listener, a new connection each, open loop (log: $RUN_DIR/load.log)"

# ---------------------------------------------------------------- the table
declare -A ADDR_NAME=() STATE=() WEIGHT=() S=()
for i in 0 1 2; do
    ADDR_NAME[127.0.0.1:${UP_PORTS[$i]}]=${NAMES[$i]}
    STATE[${NAMES[$i]}]=Healthy
    WEIGHT[${NAMES[$i]}]=100
done
BREAKER=Closed
SECOND=0

# Reads one second from mg-load into S[side.key] (side mg or alone; keys
# done ok fail local p50 p99 mean up.u1..), STATE/WEIGHT per host, BREAKER.
read_second() {
    local line kind rest kv k side up
    S=()
    while :; do
        if ! read -r -t 10 -u "$LOAD_FD" line; then
            die "mg-load stopped sending (log: $RUN_DIR/load.log)"
        fi
        read -r kind _ rest <<<"$line"
        case $kind in
            tick)
                side=${rest%% *}
                for kv in ${rest#* }; do
                    k=${kv%%=*}
                    if [[ $k == up ]]; then
                        local ups=()
                        IFS=, read -r -a ups <<<"${kv#up=}"
                        for up in "${ups[@]}"; do [[ $up == *:* ]] && S[$side.up.${up%%:*}]=${up#*:}; done
                    else
                        S[$side.$k]=${kv#*=}
                    fi
                done
                ;;
            status)
                [[ $rest == '?' ]] && continue
                local name
                for name in "${NAMES[@]}"; do STATE[$name]=Healthy WEIGHT[$name]=100; done
                BREAKER=Closed
                for kv in $rest; do
                    if [[ $kv == breaker=* ]]; then
                        BREAKER=${kv#breaker=}
                        continue
                    fi
                    name=${ADDR_NAME[${kv%%=*}]:-}
                    [[ -n $name ]] || continue
                    k=${kv#*=}
                    STATE[$name]=${k%/*}
                    WEIGHT[$name]=${k#*/}
                done
                ;;
            end) break ;;
        esac
    done
    SECOND=$((SECOND + 1))
}

state_color() {
    case "$1" in
        Healthy | Closed) printf '%s' "$GRN" ;;
        Degraded | WarmingUp | HalfOpen) printf '%s' "$YEL" ;;
        *) printf '%s' "$RED" ;;
    esac
}
ms_text() { # ms (float) -> "1.2ms" / " 250ms" / "1.2s"
    awk -v m="$1" 'BEGIN { if (m < 10) printf "%.1fms", m; else if (m < 1000) printf "%dms", m + 0.5; else printf "%.1fs", m / 1000 }'
}

# Scene totals per side (reset per scene): requests, failures, on the bad
# hosts, latency sum (ms).
declare -A TOT=()
BAD=() # names of the scene's bad hosts; empty in the live table
declare -A REFUSED_SHOWN=()
reset_totals() {
    TOT=()
    REFUSED_SHOWN=()
}

SIDE_FMT='%7s %4s %4s %4s %7s %6s'
table_header() {
    local cols
    # shellcheck disable=SC2059
    cols=$(printf "$SIDE_FMT" errors u1 u2 u3 mean p99)
    sayf '  %s%5s │ %-37s │ %-37s │ %s%s\n' "$DIM" "" "with meshguard" "Envoy alone" "meshguard's grades (steering weight)" "$RST"
    sayf '  %s%5s │ %s │ %s │ %-15s%-15s%-15s%s\n' "$DIM" "time" "$cols" "$cols" u1 u2 u3 "$RST"
}

CELLS=''
side_cells() { # side: the 36 columns of one side into CELLS; adds to TOT
    local side=$1 done fail name n pct c out mean bad_n=0
    done=${S[$side.done]:-0}
    fail=${S[$side.fail]:-0}
    c=$GRN
    ((fail > 0)) && c=$RED
    out=$(printf '%s%7s%s' "$c" "$fail/$done" "$RST")
    for name in "${NAMES[@]}"; do
        n=${S[$side.up.$name]:-0}
        pct=0
        ((done > 0)) && pct=$((n * 100 / done))
        c=''
        [[ " ${BAD[*]} " == *" $name "* ]] && { c=$B; bad_n=$((bad_n + n)); }
        out+=$(printf ' %s%4s%s' "$c" "$pct%" "$RST")
    done
    mean=${S[$side.mean]:-0}
    out+=$(printf ' %7s %6s' "$(ms_text "$mean")" "$(ms_text "${S[$side.p99]:-0}")")
    TOT[$side.done]=$((${TOT[$side.done]:-0} + done))
    TOT[$side.fail]=$((${TOT[$side.fail]:-0} + fail))
    TOT[$side.bad]=$((${TOT[$side.bad]:-0} + bad_n))
    TOT[$side.lat]=$(awk -v a="${TOT[$side.lat]:-0}" -v m="$mean" -v n="$done" 'BEGIN { printf "%.1f", a + m * n }')
    TOT[$side.p99max]=$(awk -v a="${TOT[$side.p99max]:-0}" -v b="${S[$side.p99]:-0}" 'BEGIN { print (b > a ? b : a) }')
    CELLS=$out
}

grade_cells() {
    local name st wt cell out=''
    for name in "${NAMES[@]}"; do
        st=${STATE[$name]:-Healthy}
        wt=${WEIGHT[$name]:-100}
        cell=$st
        [[ $st == Healthy ]] || cell+=" $wt%"
        out+=$(printf '%s%-15s%s' "$(state_color "$st")" "$cell" "$RST")
    done
    [[ $BREAKER == Closed ]] || out+=$(printf '%sbreaker %s%s' "$(state_color "$BREAKER")" "$BREAKER" "$RST")
    printf '%s' "$out"
}

# meshguard's transitions (Envoy's log) and Envoy alone's ejections (its
# outlier event log) since the last call, one » line each.
TRANSITIONS_SEEN=0
EVENTS_SEEN=0
ALONE_EJECTIONS=0
MG_EJECTIONS=0
poll_logs() {
    local lines=() l name k
    mapfile -t lines < <(grep -E 'meshguard: .* host [0-9.]+:[0-9]+: ([A-Za-z]+ -> [A-Za-z]+: |ejection refused)|meshguard: .*circuit breaker: ' "$RUN_DIR/envoy.log" 2>/dev/null || true)
    for ((k = TRANSITIONS_SEEN; k < ${#lines[@]}; k++)); do
        l=${lines[$k]}
        if [[ $l =~ host\ ([0-9.]+:[0-9]+):\ ([A-Za-z]+)\ -\>\ ([A-Za-z]+):\ (.*)$ ]]; then
            name=${ADDR_NAME[${BASH_REMATCH[1]}]:-${BASH_REMATCH[1]}}
            [[ ${BASH_REMATCH[3]} == Unhealthy ]] && MG_EJECTIONS=$((MG_EJECTIONS + 1))
            sayf '        %s» meshguard:%s %s %s -> %s%s%s  %s%s%s\n' "$B" "$RST" "$name" "${BASH_REMATCH[2]}" \
                "$(state_color "${BASH_REMATCH[3]}")" "${BASH_REMATCH[3]}" "$RST" "$DIM" "${BASH_REMATCH[4]}" "$RST"
        elif [[ $l =~ host\ ([0-9.]+:[0-9]+):\ (ejection\ refused.*)$ ]]; then
            name=${ADDR_NAME[${BASH_REMATCH[1]}]:-${BASH_REMATCH[1]}}
            # Repeated while the host keeps failing: once per host and scene.
            [[ -n ${REFUSED_SHOWN[$name]:-} ]] && continue
            REFUSED_SHOWN[$name]=1
            sayf '        %s» meshguard:%s %s %s%s%s\n' "$B" "$RST" "$name" "$DIM" "${BASH_REMATCH[2]}" "$RST"
        elif [[ $l =~ circuit\ breaker:\ ([A-Za-z]+)\ -\>\ ([A-Za-z]+):\ (.*)$ ]]; then
            sayf '        %s» meshguard:%s breaker %s -> %s%s%s  %s%s%s\n' "$B" "$RST" "${BASH_REMATCH[1]}" \
                "$(state_color "${BASH_REMATCH[2]}")" "${BASH_REMATCH[2]}" "$RST" "$DIM" "${BASH_REMATCH[3]}" "$RST"
        fi
    done
    TRANSITIONS_SEEN=${#lines[@]}
    lines=()
    [[ -f $RUN_DIR/outlier-events.log ]] && mapfile -t lines <"$RUN_DIR/outlier-events.log"
    for ((k = EVENTS_SEEN; k < ${#lines[@]}; k++)); do
        l=${lines[$k]}
        [[ $l =~ \"upstream_url\":\"([^\"]+)\" ]] || continue
        # Ejections Envoy only counted (enforcing_* 0) changed nothing.
        [[ $l == *'"action":"EJECT"'* && $l != *'"enforced":true'* ]] && continue
        name=${ADDR_NAME[${BASH_REMATCH[1]}]:-${BASH_REMATCH[1]}}
        local action=? type=?
        [[ $l =~ \"action\":\"([A-Z]+)\" ]] && action=${BASH_REMATCH[1]}
        [[ $l =~ \"type\":\"([A-Z_0-9]+)\" ]] && type=${BASH_REMATCH[1],,}
        if [[ $action == EJECT ]]; then
            ALONE_EJECTIONS=$((ALONE_EJECTIONS + 1))
            sayf '        %s» Envoy alone:%s %s %sejected%s  %s%s%s\n' "$B" "$RST" "$name" "$RED" "$RST" "$DIM" "$type" "$RST"
        else
            sayf '        %s» Envoy alone:%s %s %sback%s  %sejection time over%s\n' "$B" "$RST" "$name" "$GRN" "$RST" "$DIM" "$RST"
        fi
    done
    EVENTS_SEEN=${#lines[@]}
}

check_children() {
    local i
    for i in "${!PIDS[@]}"; do
        kill -0 "${PIDS[$i]}" 2>/dev/null || die "${PID_NAMES[$i]} exited unexpectedly (logs in $RUN_DIR)"
    done
}

# One table row: one second of traffic on both listeners.
ROWS=0
row() {
    local mg alone
    read_second
    check_children
    sleep 0.05 # Envoy flushes its logs every 200 ms; mg-load reports just after a second ends
    poll_logs
    side_cells mg
    mg=$CELLS
    side_cells alone
    alone=$CELLS
    sayf '  %s%4ds%s │ %s │ %s │ %s\n' "$DIM" "$SECOND" "$RST" "$mg" "$alone" "$(grade_cells)"
    ROWS=$((ROWS + 1))
}

set_behaviour() { # index json
    curl -sf --max-time 5 -X PUT "http://127.0.0.1:${UP_ADMIN[$1]}/behaviour" -d "$2" >/dev/null ||
        die "cannot change ${NAMES[$1]}'s behaviour"
}

pct_of() { # part whole
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }'
}
mean_of() { # side
    awk -v s="${TOT[$1.lat]:-0}" -v n="${TOT[$1.done]:-0}" 'BEGIN { if (n > 0) printf "%.1f", s / n; else print 0 }'
}
# "meshguard: X errors of N (a%), b% of requests to the bad host, mean c" for
# both sides, then one measured comparison sentence.
summary() { # seconds what-bad
    local side label
    sayf '  %sover these %s s:%s\n' "$B" "$1" "$RST"
    for side in mg alone; do
        label="with meshguard"
        [[ $side == alone ]] && label="Envoy alone   "
        sayf '    %s  %5s errors of %-5s (%4s)   %4s of requests on %-8s  mean %s, p99 up to %s\n' "$label" \
            "${TOT[$side.fail]:-0}" "${TOT[$side.done]:-0}" "$(pct_of "${TOT[$side.fail]:-0}" "${TOT[$side.done]:-0}")" \
            "$(pct_of "${TOT[$side.bad]:-0}" "${TOT[$side.done]:-0}")" "$2" \
            "$(ms_text "$(mean_of "$side")")" "$(ms_text "${TOT[$side.p99max]:-0}")"
    done
}
# "(3.1x fewer with meshguard)", "(about the same)", "(1.4x more with meshguard)":
# meshguard's number A against Envoy alone's B; differences under 20 % or
# under 3 (requests, ms) count as the same.
verdict() { # a b [unit-word]
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a <= b * 0.8 && b - a >= 3) { if (a > 0) printf "(%.1fx fewer with meshguard)", b / a; else print "(none with meshguard)" }
        else if (a >= b * 1.25 && a - b >= 3) { if (b > 0) printf "(%.1fx more with meshguard)", a / b; else print "(more with meshguard)" }
        else print "(about the same)" }'
}
measured_errors() {
    sayf '  %smeasured:%s errors %s with meshguard, %s Envoy alone %s\n' "$B" "$RST" \
        "${TOT[mg.fail]:-0}" "${TOT[alone.fail]:-0}" "$(verdict "${TOT[mg.fail]:-0}" "${TOT[alone.fail]:-0}")"
}
measured_bad() { # what
    sayf '  %smeasured:%s requests on %s %s with meshguard, %s Envoy alone %s\n' "$B" "$RST" "$1" \
        "${TOT[mg.bad]:-0}" "${TOT[alone.bad]:-0}" "$(verdict "${TOT[mg.bad]:-0}" "${TOT[alone.bad]:-0}")"
}
measured_latency() {
    sayf '  %smeasured:%s mean latency %s with meshguard, %s Envoy alone %s\n' "$B" "$RST" \
        "$(ms_text "$(mean_of mg)")" "$(ms_text "$(mean_of alone)")" "$(verdict "$(mean_of mg)" "$(mean_of alone)")"
}

# Rows until meshguard grades every host Healthy, its breaker is closed and
# each side sends every host at least 20 % (a fair share is 33 %) for two
# rows; at most $1 rows. Then what the return cost on each side.
until_recovered() { # max-rows
    local n=0 good=0 name side ok
    reset_totals
    while ((n < $1)); do
        row
        n=$((n + 1))
        ok=1
        [[ $BREAKER == Closed ]] || ok=0
        for name in "${NAMES[@]}"; do
            [[ ${STATE[$name]} == Healthy ]] || ok=0
            for side in mg alone; do
                ((${S[$side.up.$name]:-0} * 5 >= ${S[$side.done]:-1})) || ok=0
            done
        done
        if ((ok)); then good=$((good + 1)); else good=0; fi
        ((good >= 2)) && break
    done
    ((good >= 2)) || say "  ${YEL}(not every host back at a full share after $1 s; moving on)${RST}"
    sayf '  %sthe return, %s s:%s errors %s with meshguard, %s Envoy alone %s\n' "$B" "$n" "$RST" \
        "${TOT[mg.fail]:-0}" "${TOT[alone.fail]:-0}" "$(verdict "${TOT[mg.fail]:-0}" "${TOT[alone.fail]:-0}")"
}

# ---------------------------------------------------------------- scenes
title "The setup"
say "One Envoy, two listeners, the same three upstreams u1 u2 u3 behind each:"
say "  ${B}with meshguard${RST} (:$ENVOY_PORT)  meshguard grades every host from live traffic and steers around bad ones"
say "  ${B}Envoy alone${RST}    (:$ALONE_PORT)  Envoy's own outlier detection, as above"
say "mg-load sends the same $RATE requests/s to each. Each row is one second: errors/requests, the share"
say "of requests each upstream answered (the bad host's in bold), mean and p99 latency; then meshguard's"
say "grade of each host from its status endpoint. » lines are decisions, from Envoy's logs, when they happen."

scene_normal() {
    title "Normal traffic"
    say "All hosts healthy: both listeners spread the requests evenly and meshguard stays out of the way."
    BAD=()
    table_header
    for _ in $(seq "$T_NORMAL"); do row; done
}

scene_hard() {
    title "Scene 1: hard failure: u2 answers 503 to everything"
    say "The easy case. meshguard ejects u2 after 5 failures in a row and steers its share to u1 and u3;"
    say "Envoy's consecutive_5xx does the same. When u2 is healthy again, meshguard brings it back"
    say "through a warm-up (10% -> 30% -> 50% of its weight over ${WARMUP} s); Envoy returns it at full weight."
    BAD=(u2)
    reset_totals
    local alone_before=$ALONE_EJECTIONS mg_before=$MG_EJECTIONS
    table_header
    set_behaviour 1 '{"status":503}'
    for _ in $(seq "$T_HARD"); do row; done
    summary "$T_HARD" u2
    measured_errors
    measured_bad u2
    say "  Envoy alone ejected u2 $((ALONE_EJECTIONS - alone_before)) time(s), meshguard $((MG_EJECTIONS - mg_before)) time(s): a host failing every"
    say "  request is what Envoy's own detection is built for. After an ejection, meshguard tries the host"
    say "  with a small share first (warm-up) and ejects it again at its first failure."
    say ""
    say "u2 recovers (answers 200 again):"
    set_behaviour 1 '{}'
    until_recovered "$T_BACK"
}

scene_grey() {
    title "Scene 2: grey failure: u2 fails ${GREY_PERCENT}% of requests, at random"
    say "Successes in between reset Envoy's count of consecutive failures: consecutive_5xx trips only when"
    say "5 failures happen to come in a row. meshguard judges the failure rate over a window of requests:"
    say "from 30% u2 is Degraded (half weight), from 50% Unhealthy (ejected)."
    BAD=(u2)
    reset_totals
    local alone_before=$ALONE_EJECTIONS mg_before=$MG_EJECTIONS
    table_header
    set_behaviour 1 "{\"status\":503,\"errorPercent\":$GREY_PERCENT,\"randomErrors\":true}"
    for _ in $(seq "$T_GREY"); do row; done
    summary "$T_GREY" u2
    measured_errors
    measured_bad u2
    say "  Envoy alone ejected u2 $((ALONE_EJECTIONS - alone_before)) time(s) in this scene, meshguard $((MG_EJECTIONS - mg_before)) time(s)."
    say ""
    say "u2 recovers:"
    set_behaviour 1 '{}'
    until_recovered "$T_BACK"
}

scene_slow() {
    title "Scene 3: slow host: u3 takes ${SLOW_MS} ms to answer (and answers 200)"
    say "No errors, so Envoy's outlier detection sees nothing (Envoy has no latency-based ejection); only its"
    say "least-request balancer sends u3 less while u3 has requests in flight. meshguard counts calls slower"
    say "than 100 ms (slowCallThreshold) and grades u3 Degraded above 50% slow calls: half its weight."
    BAD=(u3)
    reset_totals
    table_header
    set_behaviour 2 "{\"latencyMs\":$SLOW_MS}"
    for _ in $(seq "$T_SLOW"); do row; done
    summary "$T_SLOW" u3
    measured_bad u3
    measured_latency
    say ""
    say "u3 is fast again:"
    set_behaviour 2 '{}'
    until_recovered "$T_BACK"
}

scene_breaker() {
    title "Scene 4: the whole service is down: every host answers 503 after 200 ms"
    say "Ejecting hosts cannot help when all of them fail (both sides eject at most half of them). meshguard's"
    say "circuit breaker opens at 50% failures: clients get an immediate 503 with retry-after instead of"
    say "waiting, and the service gets only a few probes while it recovers; half-open, 3 successful probes"
    say "close it. Envoy alone keeps sending every request to the failing hosts."
    BAD=(u1 u2 u3)
    reset_totals
    table_header
    for i in 0 1 2; do set_behaviour "$i" '{"status":503,"latencyMs":200}'; done
    for _ in $(seq "$T_DOWN"); do row; done
    summary "$T_DOWN" "the service"
    measured_bad "the service"
    measured_latency
    measured_errors
    say ""
    say "The service is back:"
    for i in 0 1 2; do set_behaviour "$i" '{}'; done
    until_recovered "$T_BACK"
}

scene_normal
for scene in $SCENES; do
    case $scene in
        hard | grey | slow | breaker) "scene_$scene" ;;
        *) die "unknown scene '$scene' in MG_DEMO_SCENES (hard grey slow breaker)" ;;
    esac
done

# ---------------------------------------------------------------- your turn
BAD=()
title "Your turn"
say "Everything keeps running and the table below goes on. In another terminal, break a host:"
say ""
try() { sayf '  %s%-38s%s %s%s%s\n' "$DIM" "$2" "$RST" "$B" "$1" "$RST"; }
a() { printf '127.0.0.1:%s' "${UP_ADMIN[$1]}"; }
try "curl -s -XPUT $(a 1)/behaviour -d '{\"status\":503}'" "u2 fails every request"
try "curl -s -XPUT $(a 1)/behaviour -d '{\"status\":503,\"errorPercent\":30,\"randomErrors\":true}'" "grey failure on u2"
try "curl -s -XPUT $(a 2)/behaviour -d '{\"latencyMs\":300}'" "slow u3"
try "curl -s -XPUT $(a 0)/behaviour -d '{\"refuse\":true}'" "u1 down (connections refused)"
try "for p in ${UP_ADMIN[*]}; do curl -s -XPUT 127.0.0.1:\$p/behaviour -d '{\"status\":503}'; done" "all down: the breaker"
try "curl -s -XPUT $(a 1)/behaviour -d '{}'" "heal u2 (same for the others)"
try "curl -s 127.0.0.1:$ENVOY_PORT$STATUS_PATH" "meshguard's view of every host (JSON)"
try "curl -s '127.0.0.1:$ADMIN_PORT/stats?filter=outlier'" "Envoy alone's outlier counters"
try "tail -f $RUN_DIR/envoy.log | grep meshguard" "meshguard's decisions"
say ""
say "Behaviour fields (all optional, missing = default): status, errorPercent, randomErrors, latencyMs,"
say "reset, refuse, grpcStatus, capacityRps. Logs: $RUN_DIR. If this terminal dies, \`make stop\` cleans up."
say "${B}Press Ctrl-C to stop everything.${RST}"
table_header
LIVE_BASE=$ROWS
while :; do
    row
    ((LIVE_SECONDS > 0 && ROWS >= LIVE_SECONDS + LIVE_BASE)) && break
    ((ROWS % 20 == 0)) && table_header
done
