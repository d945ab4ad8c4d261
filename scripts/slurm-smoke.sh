#!/usr/bin/env bash
# Smoke test of a sharded `ntk dispersion` sweep on a real single-node Slurm cluster.
#
# Installs Debian's slurm-wlm and munge (apt-get, needs root), starts munged, slurmctld and
# slurmd on localhost with a private configuration, runs a 4-task job array over a small
# sweep (`--shard ${SLURM_ARRAY_TASK_ID}/4`), merges the shards with `ntk merge`, and checks
# that the merged dispersion.csv is byte-identical to an unsharded run. The daemons it
# started are stopped on exit (by their pid files); a munged that was already running is
# left alone.
#
# Usage: scripts/slurm-smoke.sh            (NTK=path/to/ntk to choose the binary)
set -euo pipefail

NTK=${NTK:-${CARGO_TARGET_DIR:-target}/release/ntk}
if [ ! -x "$NTK" ]; then
    echo "building $NTK" >&2
    cargo build --release -p ntk-cli
fi
NTK=$(realpath "$NTK")
WORK=$(mktemp -d /tmp/ntk-slurm-smoke.XXXXXX)
echo "work directory: $WORK"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# --- munge (authentication between slurm daemons and clients) ---
STARTED_MUNGE=0
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force 2>/dev/null || create-munge-key -f
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    STARTED_MUNGE=1
    sleep 1
fi
munge -n | unmunge >/dev/null

# --- slurm: one node (this host), one partition, private state in $WORK ---
HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p "$WORK/etc" "$WORK/state" "$WORK/spool" "$WORK/log"
export SLURM_CONF="$WORK/etc/slurm.conf"
cat >"$SLURM_CONF" <<CONF
ClusterName=ntksmoke
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=smoke Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

stop_daemons() {
    for d in slurmd slurmctld; do
        if [ -s "$WORK/$d.pid" ]; then kill "$(cat "$WORK/$d.pid")" 2>/dev/null || true; fi
    done
    if [ "$STARTED_MUNGE" = 1 ] && [ -s /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
}
trap stop_daemons EXIT

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then break; fi
    sleep 1
done
sinfo

# --- the sweep: 2 groups (ReLU scaled path, tanh direct path), 12 tasks ---
FLAGS=(--activation relu --activation tanh --input-dim 20 --width 20 --depths 1..12
       --sigma-w2 0.5,1,2,3 --sigma-b2 0 --samples 100 --correlations 1.0,0.5,0.0
       --depth-chunk 2 --seed 7 --quiet)
printf '%q ' "${FLAGS[@]}" >"$WORK/flags"

cat >"$WORK/array.sbatch" <<JOB
#!/bin/bash
#SBATCH --job-name=ntk-smoke
#SBATCH --array=1-4
#SBATCH --cpus-per-task=1
#SBATCH --output=$WORK/log/array-%A_%a.out
set -euo pipefail
"$NTK" dispersion $(cat "$WORK/flags") --threads 1 \\
    --shard \${SLURM_ARRAY_TASK_ID}/4 --out-dir "$WORK/shard-\${SLURM_ARRAY_TASK_ID}"
JOB

cd "$WORK"
sbatch --wait "$WORK/array.sbatch"
"$NTK" merge "$WORK"/shard-* --out-dir "$WORK/merged"
"$NTK" dispersion "${FLAGS[@]}" --out-dir "$WORK/unsharded"
if cmp "$WORK/merged/dispersion.csv" "$WORK/unsharded/dispersion.csv"; then
    echo "OK: merged dispersion.csv ($(($(wc -l <"$WORK/merged/dispersion.csv") - 1)) rows) equals the unsharded run"
else
    echo "FAIL: merged and unsharded dispersion.csv differ" >&2
    exit 1
fi
