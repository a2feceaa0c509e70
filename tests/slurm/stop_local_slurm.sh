#!/usr/bin/env bash
# Stop the test cluster of start_local_slurm.sh: cancel its jobs, stop slurmd, slurmctld and
# munged (by the pids they recorded). Idempotent: nothing running is fine.
set -uo pipefail

say() { echo "[stop_local_slurm] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "error: must run as root"; exit 1; }

# scancel hangs while slurmctld is down, so it is bounded
if command -v scancel >/dev/null && pgrep -x slurmctld >/dev/null; then
    timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
fi

stop_pidfile() {  # name pidfile
    local pid
    pid=$(cat "$2" 2>/dev/null || true)
    [ -z "$pid" ] && pid=$(pgrep -x "$1" | head -1 || true)
    [ -z "$pid" ] && return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || { say "$1 stopped"; rm -f "$2"; return 0; }
        sleep 0.5
    done
    say "$1 ($pid) ignored SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$2"
}

stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile munged /run/munge/munged.pid
exit 0
