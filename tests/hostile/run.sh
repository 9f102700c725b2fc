#!/usr/bin/env bash
# The hostile-input suite of issue 11 ("No request can take Kastell down"): starts
# the real server on loopback under a memory cap and sends it what an attacker
# would (tests/hostile/*.py). Every case asserts the status the issue's contract
# names, that the process lives and /healthz answers 200, and that its peak RSS
# (VmHWM, reset before each case) stayed under the case's bound.
#
#   tests/hostile/run.sh [extra pytest args...]
#
# Env: KASTELL_BIN (default $CARGO_TARGET_DIR/debug/kastell, else
#      $HOME/.cache/kastell-target/debug/kastell);
#      KASTELL_HOSTILE_AS (address-space cap of each server, bytes; default 4 GiB).
# The suite starts one server per configuration it needs (default limits, short
# timeouts, a low max_in_flight, API-key auth over two tenants: see conftest.py),
# each as `prlimit --as=$KASTELL_HOSTILE_AS -- kastell serve --listen 127.0.0.1:<free port>`
# on a data directory of its own under pytest's temp dir, and stops them at the end.
#
# Why an address-space cap rather than an RSS one: a server that believes a
# declared length and allocates it fails the allocation and dies under the cap,
# which the suite sees; RSS is bounded per case by the assertions (128 MiB for
# most, printed at the end with each case's peak). 4 GiB: a healthy debug server
# reserves ~0.8 GiB of address space at rest (thread stacks, malloc arenas) and
# idles at ~40 MiB RSS; its largest peak in the suite, the deflate bomb, ~300 MiB.
# Exit code: pytest's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$(dirname "$here")")"
bin="${KASTELL_BIN:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug/kastell}}"
bin="${bin:-$HOME/.cache/kastell-target/debug/kastell}"
if [[ ! -x "$bin" ]]; then
    echo "hostile: server binary not found or not executable: $bin" >&2
    exit 2
fi
cap="${KASTELL_HOSTILE_AS:-$((4 * 1024 * 1024 * 1024))}"

export KASTELL_BIN="$bin"
export KASTELL_SERVER_WRAPPER="prlimit --as=$cap --"
export PYTHONDONTWRITEBYTECODE=1
cd "$repo"
exec python3 -m pytest -q -p no:cacheprovider tests/hostile "$@"
