# shellcheck shell=bash
# Shared helpers of the emulator scripts in tests/backends/ (sourced, not run).
# Every message goes to stderr: the start scripts print only `export` lines on
# stdout, so that `eval "$(tests/backends/start_s3.sh)"` works.

# shellcheck disable=SC2034 # used by the scripts that source this file
backends_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { say "$*"; exit 1; }

# A free TCP port on the loopback interface (the kernel picks it).
free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http PID URL [TRIES]: until URL answers with any HTTP status (every 0.2 s).
# Fails when PID exits first or after TRIES tries (default 150, i.e. 30 s).
wait_http() {
    local pid="$1" url="$2" tries="${3:-150}" i
    for ((i = 1; i <= tries; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if "$PYTHON" - "$url" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # any status means the server answers
PY
        sleep 0.2
    done
    return 1
}

# stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

# start_emulator STATE_DIR NAME URL_FOR_WAIT CMD...: starts CMD in the background
# with its output in STATE_DIR/NAME.log, records its pid in STATE_DIR/pid and
# waits until it answers. Returns 1 (after stopping it) when it does not.
start_emulator() {
    local state="$1" name="$2" url="$3"
    shift 3
    "$@" </dev/null >"$state/$name.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$state/pid"
    if wait_http "$pid" "$url"; then
        return 0
    fi
    stop_pid "$pid"
    return 1
}

# write_env STATE_DIR NAME=VALUE...: writes STATE_DIR/env (export lines) and prints it.
write_env() {
    local state="$1" kv
    shift
    : >"$state/env"
    for kv in "$@"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$state/env"
    done
    cat "$state/env"
}
