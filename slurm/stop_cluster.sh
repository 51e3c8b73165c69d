#!/bin/bash
# Stop the single-node SLURM that slurm/local_cluster.sh started: cancel every job first (a job left
# running would be lost with slurmd), then stop slurmd, slurmctld, slurmdbd, mariadbd and munged, each
# by the pid in its pid file (never by a name match: another MariaDB on the machine is left alone).
# Root. Safe to run again: a daemon without a live pid file is skipped.
set -uo pipefail
if command -v scancel >/dev/null && timeout 10 squeue -h >/dev/null 2>&1; then
    timeout 10 squeue -h -o %i | xargs -r scancel 2>/dev/null  # every job of this (local, root-run) cluster
    for _ in $(seq 30); do [ -z "$(timeout 10 squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 1; done
fi
stop() {  # name, pid file
    local pid
    pid=$(cat "$2" 2>/dev/null) || { echo "$1: no pid file $2, skipped"; return; }
    kill -0 "$pid" 2>/dev/null || { echo "$1: not running"; return; }
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { echo "stopped $1 ($pid)"; return; }; sleep 0.2; done
    echo "$1 ($pid) did not stop within 20 s" >&2
}
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
