#!/usr/bin/env bash
# Run a command (an apt-get install) so that Debian's package scripts start no
# daemon: invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d first, and
# exit code 101 means "action forbidden". A policy the machine already had is put
# back byte for byte afterwards, whatever happens (failure, Ctrl-C, SIGTERM), and
# no running process is touched: the user's own Prometheus keeps running.
#
#   scripts/without_daemons.sh apt-get install -y prometheus
#
# LLAMA_EXPORTER_POLICY_RC_D overrides the policy path (for the tests).
set -euo pipefail

policy=${LLAMA_EXPORTER_POLICY_RC_D:-/usr/sbin/policy-rc.d}
saved="$policy.llama-exporter-saved"
marker="# written by llama-exporter scripts/without_daemons.sh"

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

restore() {
    if [[ -e "$saved" || -L "$saved" ]]; then
        mv -f "$saved" "$policy"          # the machine's own policy, as it was
    elif grep -qxF "$marker" "$policy" 2>/dev/null; then
        rm -f "$policy"                   # ours; there was none before
    fi
}

# A run killed with SIGKILL cannot clean up: put its leftovers right first.
if grep -qxF "$marker" "$policy" 2>/dev/null; then
    restore
fi

if [[ -e "$policy" || -L "$policy" ]]; then
    mv "$policy" "$saved"
fi
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
printf '#!/bin/sh\n%s\n# Start no service while llama-exporter installs packages.\nexit 101\n' \
    "$marker" > "$policy.tmp.$$"
chmod 755 "$policy.tmp.$$"
mv -f "$policy.tmp.$$" "$policy"

# Not exec: the trap must run after the command.
"$@"
