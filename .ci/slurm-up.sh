#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster for the test suite (tests/test_slurm.py): munge, slurmctld, slurmd and,
# by default, slurmdbd + MariaDB so that `sacct` reports job states. Debian/Ubuntu, no systemd, no cgroups.
#
# Idempotent: when `sinfo` already answers it does nothing; packages are installed only when missing; a daemon is
# started only when its PID file does not name a live process. Never fatal to its caller's machine: when it cannot
# run (not root, no apt-get, install or start failed) it prints why, writes the reason to $AVP_SLURM_STATUS and exits 1;
# the SLURM tests then skip and quote that reason.
#   WITH_ACCOUNTING=1 (default) | 0    slurmdbd + MariaDB (sacct works) or not
#   SLURM_MEM_MB                       RealMemory of the node (default 85% of MemTotal)
#   AVP_SLURM_STATUS                   status file (default /tmp/avp-slurm-status)
set -uo pipefail
WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
STATUS_FILE=${AVP_SLURM_STATUS:-/tmp/avp-slurm-status}
export DEBIAN_FRONTEND=noninteractive
ts() { date +%s.%N; }
T0=$(ts)

fail() {
  echo "slurm-up: SLURM unavailable: $*" >&2
  echo "unavailable: $*" > "$STATUS_FILE" 2>/dev/null || true
  exit 1
}
node_state() { timeout 15 sinfo -h -o %t 2>/dev/null | head -1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS CMD...: poll every 0.25 s until CMD succeeds
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" > /dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

# (sinfo retries for ~10 s when no controller answers, so ask it only when one runs here or is configured elsewhere)
if command -v sinfo > /dev/null && { alive /run/slurmctld.pid || [ -n "${SLURM_CONF:-}" ]; } \
   && [[ "$(timeout 15 sinfo -h -o %t 2>/dev/null | head -1)" =~ ^(idle|mix|alloc|comp) ]]; then
  echo "slurm-up: already up ($(node_state))"; echo "up" > "$STATUS_FILE"; exit 0
fi
[ "$(id -u)" = 0 ] || fail "needs root to install and start the daemons (running as $(id -un))"

# ---------------------------------------------------------------- 1. install (only what is missing)
bins="munged slurmctld slurmd sinfo"
pkgs="munge slurmctld slurmd slurm-client"
if [ "$WITH_ACCOUNTING" = 1 ]; then bins="$bins slurmdbd mariadbd"; pkgs="$pkgs slurmdbd mariadb-server"; fi
missing=0
for b in $bins; do command -v "$b" > /dev/null || [ -x "/usr/sbin/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  command -v apt-get > /dev/null || fail "Slurm is not installed and apt-get is not available to install it"
  tmp_policy=0  # keep package postinst scripts from starting services (matters on hosts with systemd)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
  fi
  log=$(mktemp)
  ok=1
  apt-get update -qq > "$log" 2>&1 && apt-get install -y -qq --no-install-recommends $pkgs >> "$log" 2>&1 || ok=0
  [ "$tmp_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || { tail -5 "$log" >&2; fail "apt-get could not install $pkgs (log: $log)"; }
fi
export PATH="$PATH:/usr/sbin:/sbin"
T1=$(ts)

# ---------------------------------------------------------------- 2. configure (only while slurmctld is down)
NODE=$(hostname -s)
getent hosts "$NODE" > /dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
if ! alive /run/slurmctld.pid; then
  MEM=${SLURM_MEM_MB:-$(awk '/MemTotal/{printf "%d", $2/1024*0.85}' /proc/meminfo)}
  NODELINE=$(slurmd -C | head -1 | sed -E "s/RealMemory=[0-9]+/RealMemory=$MEM/")
  [ -n "$NODELINE" ] || fail "slurmd -C did not report this node's topology"
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  else
    ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat > /etc/slurm/slurm.conf <<CONF
# Single-node Slurm for avp's CI (.ci/slurm-up.sh); no cgroups, so --mem and CPU counts schedule but do not limit.
ClusterName=ci
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
$ACCT
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
$NODELINE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
fi

# ---------------------------------------------------------------- 3. start (only what is not running)
if ! alive /run/munge/munged.pid; then
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
fi
wait_for 10 bash -c 'munge -n | unmunge' || fail "munge does not authenticate"

if [ "$WITH_ACCOUNTING" = 1 ]; then
  if ! alive /run/mysqld/mysqld.pid; then
    install -d -o mysql -g root -m 0755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql > /dev/null \
      || fail "mariadb-install-db failed"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      > /var/log/slurm/mariadbd.log 2>&1 < /dev/null &
  fi
  wait_for 30 mariadb-admin ping || fail "MariaDB did not start (/var/log/slurm/mariadbd.log)"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || fail "could not create the accounting database user"
  cat > /etc/slurm/slurmdbd.conf <<'CONF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 0600 /etc/slurm/slurmdbd.conf
  alive /run/slurmdbd.pid || slurmdbd || fail "slurmdbd did not start (/var/log/slurm/slurmdbd.log)"
  wait_for 30 sacctmgr -n list cluster || fail "slurmdbd does not answer (/var/log/slurm/slurmdbd.log)"
fi

alive /run/slurmctld.pid || slurmctld || fail "slurmctld did not start (/var/log/slurm/slurmctld.log)"
wait_for 30 scontrol ping || fail "slurmctld does not answer (/var/log/slurm/slurmctld.log)"
alive /run/slurmd.pid || slurmd || fail "slurmd did not start (/var/log/slurm/slurmd.log)"
node_idle() { [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; }
if ! wait_for 30 node_idle; then
  scontrol update NodeName="$NODE" State=RESUME > /dev/null 2>&1
  wait_for 15 node_idle || fail "node $NODE is $(node_state), not idle (/var/log/slurm/slurmd.log)"
fi
T2=$(ts)

# ---------------------------------------------------------------- 4. smoke test
timeout 60 srun -N1 -n1 true || fail "srun could not run a job step"
T3=$(ts)
sinfo
echo "up" > "$STATUS_FILE"
awk -v a="$T0" -v b="$T1" -v c="$T2" -v d="$T3" \
  'BEGIN{printf "slurm-up: TIMING install=%.1fs configure+start=%.1fs smoke=%.1fs total=%.1fs\n", b-a, c-b, d-c, d-a}'
