#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, as root and without systemd, for the
# integration test of profiles/local-slurm (tests/test_slurm.py) and for trying the profile by hand.
#
#   partitions: cpu (default) and gpu, both on this node; the node advertises one GPU whose
#   gres.conf device is /dev/null (a count-only GPU GRES drains the node), so jobs that ask for
#   --gpus=1 are scheduled like on MeluXina's gpu partition but see no CUDA device and train on
#   the CPU (the trainer logs which device it used).
#
# Idempotent: a second call with the cluster up only waits for the node to be idle. Installs
# Debian's slurmctld, slurmd, slurm-client and munge if missing (needs apt and root).
# Undo with tests/slurm/stop_local_slurm.sh. Logs: /var/log/slurm/{slurmctld,slurmd}.log.
set -euo pipefail

# The config must be /etc/slurm/slurm.conf: the jobstep executor drops SLURM_CONF before its
# inner srun, so any other path is lost inside the job.
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
WAIT_S=${SLURM_START_WAIT_S:-60}

say() { echo "[start_local_slurm] $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts slurmctld/slurmd)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing"
    say "installing slurmctld slurmd slurm-client munge (Debian packages)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurmctld slurmd slurm-client munge; } \
        >/tmp/local-slurm-apt.log 2>&1 || die "apt-get failed, see /tmp/local-slurm-apt.log"
fi

NODE=$(hostname -s)
# slurmd -C reports what slurmd will register; the node must not claim more or it drains.
HW=$(slurmd -C | grep '^NodeName=' | head -1)
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not read CPUs/RealMemory from slurmd -C: $HW"
MEM=$((MEM - 512))  # leave room for the daemons themselves
DEF_MEM=$((MEM / CPUS / 4))  # a job that names no memory takes a quarter of a core's share
# the node line as slurmd sees the hardware (boards, sockets, cores), with the reduced memory
NODE_LINE=$(sed -e "s/^NodeName=[^ ]*/NodeName=$NODE/" -e "s/ RealMemory=[0-9]*/ RealMemory=$MEM/" <<<"$HW")

mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d"
CONF=$CONF_DIR/slurm.conf
NEW_CONF=$(cat <<CONF
# Written by tests/slurm/start_local_slurm.sh: a one-node test cluster (do not edit by hand).
ClusterName=earlyad-local
# loopback addresses: the host name need not resolve (containers, CI)
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# share the node between jobs by core and memory (else one job takes the whole node)
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
GresTypes=gpu
# no slurmdbd: sacct cannot answer, so the profile polls with squeue, which needs finished jobs
# to stay visible well beyond the executor's first status check
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
$NODE_LINE NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
CONF
)
NEW_GRES="NodeName=$NODE Name=gpu File=/dev/null"

running() { pgrep -x "$1" >/dev/null; }

if running slurmctld && running slurmd && [ "$(cat "$CONF" 2>/dev/null)" = "$NEW_CONF" ]; then
    say "already running"
else
    if running slurmctld || running slurmd; then
        say "restarting with a new configuration"
        bash "$(dirname "$0")/stop_local_slurm.sh"
    fi
    printf '%s\n' "$NEW_CONF" > "$CONF"
    printf '%s\n' "$NEW_GRES" > "$CONF_DIR/gres.conf"

    # munge: its key comes with the package; run the daemon as the munge user
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if ! running munged; then
        su -s /bin/sh munge -c "munged --force" || die "munged did not start"
    fi
    munge -n | unmunge >/dev/null || die "munge round trip failed (see /var/log/munge/munged.log)"

    slurmctld -c -i || die "slurmctld did not start, see $LOG_DIR/slurmctld.log"
    slurmd || die "slurmd did not start, see $LOG_DIR/slurmd.log"
fi

# sinfo hangs while slurmctld is still coming up, so every call is bounded; a daemon that died
# (bad config) fails the start at once, with the end of its log
deadline=$((SECONDS + WAIT_S))
while [ "$SECONDS" -lt "$deadline" ]; do
    for daemon in slurmctld slurmd; do
        if ! running "$daemon"; then
            tail -5 "$LOG_DIR/$daemon.log" >&2 || true
            die "$daemon exited, see $LOG_DIR/$daemon.log"
        fi
    done
    state=$(timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated) say "node $NODE is $state (partitions cpu, gpu)"; exit 0 ;;
        *drain*|down*) timeout 5 scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
timeout 5 scontrol show node "$NODE" >&2 || true
die "node $NODE not idle after ${WAIT_S}s, see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
