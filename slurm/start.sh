#!/usr/bin/env bash
# Start a real one-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) on a Debian machine,
# as root, without systemd. Idempotent: a running cluster is left as it is. Installs the Debian packages
# when they are missing. Prints the SLURM_CONF to export; every path and port can be set:
#   MEDINJECT_SLURM_DIR (state, logs, configs)   default /tmp/medinject-slurm
#   SLURMCTLD_PORT / SLURMD_PORT / SLURMDBD_PORT / SLURM_MYSQL_PORT   default 6817 / 6818 / 6819 / 3307
set -euo pipefail

DIR=${MEDINJECT_SLURM_DIR:-/tmp/medinject-slurm}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
DBD_PORT=${SLURMDBD_PORT:-6819}
MYSQL_PORT=${SLURM_MYSQL_PORT:-3307}
HOST=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf

log() { echo "slurm/start.sh: $*" >&2; }
wait_for() {  # wait_for <seconds> <description> <command...>
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what (logs in $DIR/log)"; exit 1
}

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing slurm-wlm, slurmdbd, munge, mariadb-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

if [ -f "$DIR/slurm.conf" ] && sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "$SLURM_CONF"; exit 0
fi
mkdir -p "$DIR"/{log,state,spool,mysql,run}

# munge: one key for the machine, daemon as root
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown root:root /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown root:root /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  munged --force
  wait_for 10 munged munge -n
fi

# MariaDB for accounting (without sacct, submitit cannot see a job that died without a result)
if [ ! -d "$DIR/mysql/mysql" ]; then
  mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal >"$DIR/log/mysql-install.log" 2>&1
fi
if ! mariadb-admin --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot ping >/dev/null 2>&1; then
  mariadbd --user=root --datadir="$DIR/mysql" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
    --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mysql.pid" >"$DIR/log/mysql.log" 2>&1 &
  wait_for 30 mariadb mariadb-admin --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot ping
fi
mariadb --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmdbd';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat >"$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurmdbd
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
CONF
chmod 600 "$DIR/slurmdbd.conf"
cat >"$SLURM_CONF" <<CONF
ClusterName=medinject
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

if ! sacctmgr -n show cluster >/dev/null 2>&1; then
  slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -n show cluster
fi
sacctmgr -i add cluster medinject >/dev/null 2>&1 || true
if ! scontrol ping 2>/dev/null | grep -q UP; then
  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld bash -c "scontrol ping | grep -q UP"
fi
if ! pgrep -f "slurmd -f $SLURM_CONF" >/dev/null; then
  slurmd -f "$SLURM_CONF"
fi
wait_for 60 "node $HOST idle" bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
echo "$SLURM_CONF"
