#!/usr/bin/env bash
# End-to-end test with a real viewer: OHIF (npm @ohif/app, its prebuilt dist/) in
# headless Debian Chromium, driven by playwright-core, against a freshly started
# Kastell holding studies stored through STOW-RS (native CT, JPEG baseline
# multi-frame US, JPEG 2000 lossless MR, JPEG 2000 NM).
#
#   tests/viewer/run.sh
#
# 1. same origin: one small proxy (tests/viewer/proxy.py) serves dist/ and
#    forwards /dicomweb/* and /wado to Kastell;
# 2. cross origin: dist/ on one port, the viewer calling Kastell directly on
#    another, Kastell's CORS allowing exactly the viewer's origin;
# in both: the study list shows every stored study, and every study puts a real
# image on the viewport canvas (lit pixels and grey levels, see viewer.mjs);
# 3. negative control: the same check behind a proxy that answers 500 to every
#    .../frames/... request must fail (so we know the check can fail).
#
# Installs what is missing: Debian's chromium (apt), the OHIF tarball (npm pack)
# and playwright-core (npm, no browser download), cached under
# KASTELL_VIEWER_CACHE (default ~/.cache/kastell-viewer), and pydicom/requests.
# Env: KASTELL_BIN (default $CARGO_TARGET_DIR/debug/kastell), KASTELL_ARTIFACTS
#      (default $CARGO_TARGET_DIR/artifacts; screenshots, reports and logs go to
#      its viewer/ subdirectory), KEEP_TMP=1 keeps the temp dir.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
started_at=$SECONDS

OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.1
CHROMIUM=/usr/bin/chromium

step() { printf '\n==> %s\n' "$*"; }
say() { printf 'viewer: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
bin="${KASTELL_BIN:-$target_dir/debug/kastell}"
artifacts="${KASTELL_ARTIFACTS:-$target_dir/artifacts}/viewer"
cache="${KASTELL_VIEWER_CACHE:-$HOME/.cache/kastell-viewer}"
[[ -x "$bin" ]] || die "server binary not found or not executable: $bin (cargo build first)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kastell-viewer.XXXXXX")"
pids=()
failed=1
cleanup() {
    local pid i
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ -d "$tmp" && -d "$artifacts" ]]; then
        cp "$tmp"/*.log "$artifacts/" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" == "1" ]]; then say "kept $tmp"; else rm -rf "$tmp"; fi
    if [[ $failed -ne 0 ]]; then
        say "FAILED after $((SECONDS - started_at)) s; screenshots, reports and logs in $artifacts"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_url PID URL: until URL answers 200 (every 0.2 s, 30 s), failing when PID exits.
wait_url() {
    local pid="$1" url="$2" i
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        if python3 -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('$url', timeout=1).status == 200 else 1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# start_proxy NAME ARGS...: starts proxy.py in the background, sets $proxy_port.
start_proxy() {
    local name="$1" i
    shift
    python3 "$here/proxy.py" --dist "$dist" --port-file "$tmp/$name.port" --log "$tmp/$name-proxy.log" "$@" \
        >"$tmp/$name-proxy.out.log" 2>&1 &
    pids+=($!)
    for i in $(seq 1 100); do
        [[ -s "$tmp/$name.port" ]] && break
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$tmp/$name-proxy.out.log" >&2; die "proxy $name exited"; }
        sleep 0.1
    done
    [[ -s "$tmp/$name.port" ]] || die "proxy $name did not start listening within 10 s"
    proxy_port="$(cat "$tmp/$name.port")"
    wait_url "${pids[-1]}" "http://127.0.0.1:$proxy_port/app-config.js" || die "proxy $name does not answer"
}

step "viewer test prerequisites: chromium, node, python packages"
if [[ ! -x "$CHROMIUM" ]]; then
    say "installing Debian's chromium (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "installing nodejs and npm (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! python3 -c 'import pydicom, requests' 2>/dev/null; then
    say "installing pydicom and requests (pip)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'pydicom>=3.0,<4' 'requests>=2.31'
fi
echo "$("$CHROMIUM" --version 2>/dev/null | head -n1), node $(node --version)"

step "OHIF viewer @ohif/app@$OHIF_VERSION and playwright-core@$PLAYWRIGHT_VERSION (cache $cache)"
mkdir -p "$cache"
ohif_dir="$cache/ohif-app-$OHIF_VERSION"
dist="$ohif_dir/dist"
tarball="$cache/ohif-app-$OHIF_VERSION.tgz"
if [[ ! -f "$ohif_dir/.complete" ]]; then
    if [[ ! -s "$tarball" ]]; then
        say "fetching @ohif/app@$OHIF_VERSION (npm pack, about 50 MB)"
        pack="$(mktemp -d "$cache/pack.XXXXXX")"
        (cd "$pack" && npm pack --silent --loglevel=error "@ohif/app@$OHIF_VERSION" >/dev/null)
        mv -f "$pack/ohif-app-$OHIF_VERSION.tgz" "$tarball" # a rename: never half a tarball
        rm -rf "$pack"
    fi
    say "extracting $tarball"
    extract="$(mktemp -d "$cache/extract.XXXXXX")"
    tar -xzf "$tarball" -C "$extract" --strip-components=1
    [[ -f "$extract/dist/index.html" ]] || { rm -rf "$extract"; die "no dist/index.html in $tarball"; }
    touch "$extract/.complete"
    rm -rf "$ohif_dir" # what an interrupted run left
    mv -T "$extract" "$ohif_dir" 2>/dev/null || rm -rf "$extract"
    [[ -f "$ohif_dir/.complete" ]] || die "could not extract $tarball into $ohif_dir"
fi
node_dir="$cache/node"
pw_pkg="$node_dir/node_modules/playwright-core/package.json"
if [[ ! -f "$pw_pkg" ]] || [[ "$(node -p "require('$pw_pkg').version")" != "$PLAYWRIGHT_VERSION" ]]; then
    say "installing playwright-core@$PLAYWRIGHT_VERSION (npm, no browser download)"
    mkdir -p "$node_dir"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$node_dir" --no-audit --no-fund \
        --no-save --loglevel=error "playwright-core@$PLAYWRIGHT_VERSION" >&2
fi
export KASTELL_VIEWER_NODE_MODULES="$node_dir/node_modules"
export CHROMIUM
echo "dist: $dist"

rm -rf "$artifacts"
mkdir -p "$artifacts"

step "starting the cross-origin viewer host and Kastell (CORS for that origin only)"
kastell_port="$(free_port)"
kastell="http://127.0.0.1:$kastell_port"
# The cross-origin viewer quotes the type in its multipart Accept (OHIF's
# omitQuotationForMultipartRequest: false), so every frame request is preceded
# by a CORS preflight; the same-origin one sends it unquoted.
start_proxy cross --dicomweb-root "$kastell/dicomweb" --wado-uri-root "$kastell/wado" --quoted-accept
cross_origin="http://127.0.0.1:$proxy_port"
mkdir -p "$tmp/data"
# The same-origin proxy (tests/viewer/proxy.py) names itself in X-Forwarded-Host,
# which Kastell honours only from a trusted proxy.
KASTELL__SERVER__TRUSTED_PROXIES='["127.0.0.1"]' \
KASTELL__SERVER__CORS_ALLOWED_ORIGINS="[\"$cross_origin\"]" \
    "$bin" serve --listen "127.0.0.1:$kastell_port" --data-dir "$tmp/data" >"$tmp/kastell.log" 2>&1 &
pids+=($!)
if ! wait_url "${pids[-1]}" "$kastell/healthz"; then
    tail -n 50 "$tmp/kastell.log" >&2
    die "Kastell did not become healthy on $kastell"
fi
echo "Kastell $kastell (pid ${pids[-1]}), viewer origin $cross_origin"

step "storing the test studies through STOW-RS"
python3 "$here/studies.py" "$kastell/dicomweb" "$tmp/studies.json"
cp "$tmp/studies.json" "$artifacts/studies.json"

step "same origin: OHIF and /dicomweb behind one proxy"
start_proxy same --upstream "$kastell"
same_origin="http://127.0.0.1:$proxy_port"
same_rc=0
node "$here/viewer.mjs" --base "$same_origin" --studies "$tmp/studies.json" --mode same-origin \
    --out "$artifacts" || same_rc=$?

step "cross origin: OHIF on $cross_origin, DICOMweb on $kastell"
cross_rc=0
node "$here/viewer.mjs" --base "$cross_origin" --studies "$tmp/studies.json" --mode cross-origin \
    --out "$artifacts" || cross_rc=$?
preflights="$(grep -c '"OPTIONS /dicomweb/' "$tmp/kastell.log" || true)"
echo "  Kastell answered $preflights CORS preflight(s) (OPTIONS)"

step "negative control: the same check with every frame request answered 500 must fail"
start_proxy refuse --upstream "$kastell" --refuse-frames 500
control_rc=0
node "$here/viewer.mjs" --base "http://127.0.0.1:$proxy_port" --studies "$tmp/studies.json" \
    --mode negative-control --only ct-native --skip-list 1 --timeout-ms 15000 \
    --out "$artifacts" || control_rc=$?
# The control proves something only when the viewer got everything but the
# frames: the metadata answered 200 and the proxy refused frame requests.
refused="$(grep -c '"refused": true' "$tmp/refuse-proxy.log" 2>/dev/null || true)"
metadata_ok="$(grep '/metadata' "$tmp/refuse-proxy.log" 2>/dev/null | grep -c '"status": 200' || true)"
control_ok=0
if [[ $control_rc -eq 1 && "${refused:-0}" -gt 0 && "${metadata_ok:-0}" -gt 0 ]]; then
    control_ok=1
fi

step "summary"
python3 - "$artifacts" <<'PY'
import json, sys, os
out = sys.argv[1]
for mode in ("same-origin", "cross-origin", "negative-control"):
    path = os.path.join(out, f"{mode}.json")
    if not os.path.exists(path):
        print(f"{mode:<17} no report (the driver did not finish)")
        continue
    r = json.load(open(path))
    if "studyList" in r:
        sl = r["studyList"]
        print(f"{mode:<17} study list        {sl['shown']}/{sl['expected']} studies shown")
    for s in r["studies"]:
        st = s.get("stats") or {}
        fig = (f"{st.get('lit', 0):>7} lit px ({100 * st.get('litFraction', 0):4.1f} %), "
               f"{st.get('levels', 0):>3} levels") if st.get("canvases") else "no canvas"
        print(f"{mode:<17} {s['key']:<20} {'image' if s['image'] else 'NO IMAGE':<8} {fig}; "
              f"{s['frameRequests']} frame req, {len(s['failedRequests'])} failed, {s['ms']} ms")
        if s.get("scrolled"):
            sc = s["scrolled"]
            print(f"{'':<17} {'':<20} scrolled to frame {sc['overlay'] or '?'}: "
                  f"{'image' if sc['image'] else 'NO IMAGE'}, changed by {sc['difference']:.1f} grey levels")
        if s["frameContentTypes"]:
            print(f"{'':<17} {'':<20} frames asked as: {' | '.join(s.get('frameAccepts', []))}")
            print(f"{'':<17} {'':<20} answered as: {', '.join(s['frameContentTypes'])}")
PY
echo "screenshots and reports: $artifacts"
status=0
[[ $same_rc -eq 0 ]] && echo "same origin:      PASS" || { echo "same origin:      FAIL (driver exit $same_rc)"; status=1; }
[[ $cross_rc -eq 0 ]] && echo "cross origin:     PASS" || { echo "cross origin:     FAIL (driver exit $cross_rc)"; status=1; }
if [[ $control_ok -eq 1 ]]; then
    echo "negative control: PASS (the check failed as it must: driver exit 1, metadata 200, $refused frame request(s) refused)"
else
    echo "negative control: FAIL (driver exit $control_rc, $metadata_ok metadata 200, $refused frame request(s) refused;" \
        "expected exit 1, metadata served and at least one refusal)"
    status=1
fi
echo "viewer test took $((SECONDS - started_at)) s"
failed=$status
exit $status
