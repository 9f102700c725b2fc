#!/usr/bin/env bash
# Make a SoftHSM2 token (a software PKCS#11 HSM) in a state dir and print the
# environment Kastell's PKCS#11 tests need as `export` lines on stdout
# (everything else goes to stderr):
#
#   eval "$(tests/backends/start_softhsm.sh)"  # or: start_softhsm.sh STATE_DIR [LABEL]
#   pkcs11-tool --module "$KASTELL_TEST_PKCS11_MODULE" --token-label "$KASTELL_TEST_PKCS11_TOKEN" \
#       --login --pin "$(cat "$KASTELL_TEST_PKCS11_PIN_FILE")" --list-objects
#   tests/backends/stop.sh "$KASTELL_SOFTHSM_STATE"
#
# SoftHSM is a library loaded by the PKCS#11 caller, so nothing runs in the
# background (no pid file): STATE_DIR/softhsm2.conf points SoftHSM at the token
# files in STATE_DIR/tokens, STATE_DIR/user.pin and STATE_DIR/so.pin (mode 600,
# no trailing newline) hold the user and SO PINs, and the export lines are also
# written to STATE_DIR/env. STATE_DIR defaults to a new temp dir; LABEL (the
# token label) to kastell. When STATE_DIR already holds a token with that label
# only the export lines are printed; another label gets a second token with the
# same PINs. Installs Debian's softhsm2 and opensc (pkcs11-tool) with apt-get
# when softhsm2-util or pkcs11-tool is missing.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state="${1:-$(mktemp -d "${TMPDIR:-/tmp}/kastell-softhsm.XXXXXX")}"
label="${2:-kastell}"
[[ -n "$label" && ${#label} -le 32 ]] || die "token label must be 1 to 32 characters: '$label'"
mkdir -p "$state/tokens"
state="$(cd "$state" && pwd)" # SOFTHSM2_CONF is read from wherever the tests run

packages=()
command -v softhsm2-util >/dev/null || packages+=(softhsm2)
command -v pkcs11-tool >/dev/null || packages+=(opensc)
if [[ ${#packages[@]} -gt 0 ]]; then
    say "installing ${packages[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${packages[@]}" >&2
fi

# The module: Debian's stable path first, then the multiarch dirs and other
# distributions' places.
module=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
    /usr/lib64/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [[ -f "$candidate" ]]; then
        module="$candidate"
        break
    fi
done
[[ -n "$module" ]] || die "libsofthsm2.so not found (is softhsm2 installed?)"

conf="$state/softhsm2.conf"
cat >"$conf" <<EOF
# SoftHSM v2 configuration of the Kastell tests (written by start_softhsm.sh)
directories.tokendir = $state/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF="$conf"

# has_token LABEL: whether the token dir already holds a token labelled LABEL
# (softhsm2-util pads labels to 32 characters with spaces).
has_token() {
    softhsm2-util --show-slots 2>/dev/null |
        sed -n 's/^ *Label: *//p' | sed 's/ *$//' | grep -Fx -- "$1" >/dev/null
}

# new_pin FILE: a random PIN (32 hex digits) in FILE (mode 600) unless FILE has one.
new_pin() {
    [[ -s "$1" ]] && return 0
    local pin
    if [[ -r /dev/urandom ]]; then
        pin="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
    else
        pin="kastell-$RANDOM$RANDOM$RANDOM$RANDOM"
    fi
    (umask 077 && printf '%s' "$pin" >"$1")
    chmod 600 "$1"
}

if has_token "$label"; then
    [[ -s "$state/user.pin" ]] || die "$state has token '$label' but no user.pin"
    say "token '$label' already in $state/tokens"
else
    new_pin "$state/so.pin"
    new_pin "$state/user.pin"
    softhsm2-util --init-token --free --label "$label" \
        --so-pin "$(cat "$state/so.pin")" --pin "$(cat "$state/user.pin")" >&2
    has_token "$label" || die "softhsm2-util did not create token '$label'"
    say "SoftHSM2 token '$label' in $state/tokens (module $module)"
fi

write_env "$state" \
    SOFTHSM2_CONF="$conf" \
    KASTELL_TEST_PKCS11_MODULE="$module" \
    KASTELL_TEST_PKCS11_TOKEN="$label" \
    KASTELL_TEST_PKCS11_PIN_FILE="$state/user.pin" \
    KASTELL_SOFTHSM_STATE="$state"
