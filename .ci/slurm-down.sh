#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started, by PID file, in reverse order. Idempotent; never fails.
for pf in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "slurm-down: stopped $pf ($pid)"
  fi
  rm -f "$pf"  # slurmctld/slurmdbd leave stale PID files behind; dpkg's prerm of slurmctld trips over them
done
echo "stopped" > "${AVP_SLURM_STATUS:-/tmp/avp-slurm-status}" 2>/dev/null
exit 0
