#!/usr/bin/env bash
# Creates the two Python environments the interop tests drive the server with:
#   .venv/addon     replication 0.9.10 as the Blender add-on ships it
#                   (deepdiff 8.1.1, pyzmq 26.2.1, installed without resolving)
#   .venv/upstream  replication 0.9.10 as upstream pins it (deepdiff 5.7.0)
# Idempotent: a venv whose marker file matches the wanted packages is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ADDON_PKGS="replication==0.9.10 pyzmq==26.2.1 deepdiff==8.1.1 orderly-set==5.2.3"
UPSTREAM_PKGS="replication==0.9.10"
TEST_PKGS=(pytest==8.3.4 pyyaml==6.0.2 prometheus-client==0.21.1)

make_venv() {
    local dir=$1 mode=$2 pkgs=$3
    local marker="$dir/.installed"
    local want="$mode $pkgs ${TEST_PKGS[*]}"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        return 0
    fi
    echo "setting up $dir ($pkgs)"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "${TEST_PKGS[@]}"
    if [[ $mode == nodeps ]]; then
        # shellcheck disable=SC2086
        "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps $pkgs
    else
        # shellcheck disable=SC2086
        "$dir/bin/pip" install --quiet --disable-pip-version-check $pkgs
    fi
    echo "$want" > "$marker"
}

make_venv .venv/addon nodeps "$ADDON_PKGS"
make_venv .venv/upstream deps "$UPSTREAM_PKGS"
