#!/usr/bin/env bash
# Debian packages the test suite needs beyond the Python venv: the PostgreSQL server behind the
# MLflow tracking server in tests/integration, and (with --with-chromium) headless Chromium for the
# HTML report check. Idempotent: when everything is present it only checks and exits in well under
# a second; otherwise one `apt-get update` + `apt-get install`.
#
#   scripts/ci_system_deps.sh                 # PostgreSQL server only
#   scripts/ci_system_deps.sh --with-chromium # PostgreSQL + Chromium
#   UNISWEEP_WITH_CHROMIUM=1 scripts/ci_system_deps.sh
set -euo pipefail

with_chromium="${UNISWEEP_WITH_CHROMIUM:-0}"
for arg in "$@"; do
    case "$arg" in
        --with-chromium) with_chromium=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "ci_system_deps.sh: unknown argument '$arg'; allowed: --with-chromium" >&2; exit 2 ;;
    esac
done

want=()
# The tests locate initdb/postgres under /usr/lib/postgresql/<major>/bin and run the server as
# the 'postgres' system user that Debian's package creates.
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null \
        || ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
        || ! id postgres >/dev/null 2>&1; then
    want+=(postgresql)
fi
if [[ "$with_chromium" == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
    want+=(chromium)
fi

if ((${#want[@]} == 0)); then
    echo "ci_system_deps: present (postgresql$([[ $with_chromium == 1 ]] && echo ', chromium'))"
    exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then
    sudo_cmd=(sudo)
fi

# Keep package post-install scripts from starting services (Debian's postgresql would start a
# cluster on port 5432): the tests start their own server on a free loopback port.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod 755 "$policy"
    added_policy=1
fi
cleanup() { if [[ "$added_policy" == 1 ]]; then "${sudo_cmd[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

start=$(date +%s)
echo "ci_system_deps: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
echo "ci_system_deps: installed ${want[*]} in $(( $(date +%s) - start )) s"
