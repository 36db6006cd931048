#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for the tests of Kiln's Slurm launcher: Debian's
# slurm-wlm and munge (installed with apt when missing, which needs root), slurmctld and slurmd
# with their state, spool and logs in one folder, no accounting database (job states come from
# `scontrol show job`). The node has the machine's CPUs and two GPUs' worth of generic resources
# (`--gres=gpu:N` is schedulable; the "devices" are /dev/null and /dev/zero, so nothing real is
# used). Idempotent: a cluster this script started and that still answers is reused.
#
# Prints the path of its slurm.conf (point SLURM_CONF at it). Stop it with
# `scripts/start-slurm.sh --stop`.
#   KILN_SLURM_DIR  where the cluster lives (default target/slurm)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${KILN_SLURM_DIR:-$PWD/target/slurm}"
conf="$dir/slurm.conf"
sudo=""
[[ "$(id -u)" == 0 ]] || sudo="sudo"

stop() {
    for d in slurmctld slurmd; do
        if [[ -f "$dir/$d.pid" ]]; then
            $sudo kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
        fi
    done
}
if [[ "${1:-}" == --stop ]]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing Debian's slurm-wlm and munge" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >&2
fi
if [[ -f "$conf" ]] && SLURM_CONF="$conf" timeout 5 scontrol ping 2>/dev/null | grep -q UP \
    && SLURM_CONF="$conf" timeout 5 sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "$conf"
    exit 0
fi
stop
mkdir -p "$dir/state" "$dir/spool"

# munge: the key the package made, its daemon started as root (--force: the cluster's daemons
# run as root too), and checked before Slurm needs it.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    $sudo mkdir -p /run/munge
    $sudo /usr/sbin/munged --force 2>/dev/null || true
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "munged does not answer (see /var/log/munge/munged.log)" >&2
        exit 1
    fi
fi

node="$(hostname -s)"
cpus="$(nproc)"
mem="$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)"
cat > "$conf" <<CONF
ClusterName=kiln-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
MinJobAge=300
KillWait=5
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$dir/gres.conf" <<CONF
NodeName=$node Name=gpu File=/dev/null
NodeName=$node Name=gpu File=/dev/zero
CONF
$sudo slurmctld -f "$conf" >&2
$sudo slurmd -f "$conf" >&2
for _ in $(seq 100); do
    if SLURM_CONF="$conf" sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "$conf"
        exit 0
    fi
    sleep 0.2
done
echo "the Slurm cluster did not come up; logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
