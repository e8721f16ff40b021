#!/usr/bin/env bash
# Stop the one-node cluster started by slurm/start.sh (same MEDINJECT_SLURM_DIR). Idempotent.
# With --purge, also delete its state, accounting database and logs.
set -uo pipefail
DIR=${MEDINJECT_SLURM_DIR:-/tmp/medinject-slurm}
for daemon in slurmd slurmctld slurmdbd mysql; do
  pid=$(cat "$DIR/run/$daemon.pid" 2>/dev/null) || continue
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$DIR/run/$daemon.pid"
done
if [ "${1:-}" = "--purge" ]; then rm -rf "$DIR"; fi
