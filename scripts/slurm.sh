#!/usr/bin/env bash
# slurm.sh - a real, single-node SLURM cluster on this machine, for the scheduler tests.
#
#   scripts/slurm.sh start           install (if needed), configure and start; wait for the node
#   scripts/slurm.sh stop [--purge]  stop it; --purge also forgets every job (state + database)
#   scripts/slurm.sh stop DAEMON     stop only slurmctld, slurmd or slurmdbd (a controller or
#                                    database restart, as tests need it); start brings it back
#   scripts/slurm.sh status          print the node's state; exit 0 only when it takes jobs
#
# The cluster: Debian 12's SLURM 22.05 with munge authentication, one node named after
# `hostname -s` at 127.0.0.1 (CPUs = nproc, RealMemory = half the RAM), one partition "debug"
# (default, no time limit). Daemons talk over loopback TCP (ports 6817, 6818 and, with
# accounting, 6819), so those ports must be free. Once it is up any local user can use
# sbatch/squeue/scontrol/scancel/sacct with no environment variables.
#
# Accounting. By default slurmdbd runs too, storing jobs in MariaDB (which listens on its Unix
# socket only, /run/mysqld/mysqld.sock; a MariaDB already answering there is reused, provided
# root gets in through the socket), so `sacct` reports finished jobs. With SLURM_ACCOUNTING=none
# slurmctld is configured without it and `sacct` fails with "Slurm accounting storage is
# disabled", as on clusters without a database; finished jobs can still be read with
# `scontrol show job` for MinJobAge (10 minutes). Switching modes is just `start` with the other
# setting: slurm.conf is rewritten and slurmctld and slurmd are restarted (a few seconds; queued
# and running jobs survive it, their state is saved on disk). slurmdbd and MariaDB are left
# running in mode "none", so that switching back is cheap; `stop` stops them.
#
# start is idempotent: when everything is already up with the wanted configuration it only
# looks (well under a second, and it then needs no root). Otherwise, as root, it
#   1. installs the missing Debian packages (--no-install-recommends),
#   2. starts munged, then (accounting) mariadbd and slurmdbd, each only if not running,
#   3. writes /etc/slurm/slurm.conf (an existing foreign one is kept as slurm.conf.orig);
#      if a running slurmctld has another configuration, restarts slurmctld and slurmd,
#   4. starts slurmctld and slurmd if not running, and waits until `sinfo` shows the node up
#      (a drained or down node is resumed).
# Concurrent starts are serialised with a lock. Starting the daemons takes ~5 s (it waits for
# slurmctld's first scheduling pass, so that the first job starts as fast as later ones), a
# mode switch ~4 s, and the package installation adds ~15 s the first time.
#
# stop stops slurmd, slurmctld and slurmdbd (found by their pid files), and mariadbd and munged
# only if this script started them (recorded in /run/remote-magic-slurm/started). Config, logs,
# job state and the accounting database are kept, so job ids go on where they stopped; with
# --purge the controller's and node's state and the database slurm_acct_db are deleted.
#
# Gotchas seen on this machine:
# * `--time` is in whole minutes (rounded up) and is enforced 60-90 s late; cancelled and
#   timed-out jobs both report ExitCode 0:15.
# * A fresh slurmctld schedules nothing for ~3 s (start waits for its first pass, see above);
#   after that trivial jobs go from sbatch to COMPLETED in 0.5-1 s (the controller works on a
#   one-second tick). sacct lags scontrol by a fraction of a second.
# * slurmctld and slurmdbd run as user slurm and cannot delete their pid files in /run; a stale
#   /run/slurmctld.pid makes Debian's slurmctld prerm fail (so stop deletes stale ones).
# * Started daemons must not inherit the lock's file descriptor, or the lock is held as long
#   as they live.
# * PID 1 here reaps orphans only every ~2 s, so a dead daemon may linger as a zombie: liveness
#   checks below ignore zombies.
# * Daemons are started with their output in /var/log/slurm/*.start.log, never on our stdout:
#   a caller capturing our output (subprocess.run) would otherwise wait for the daemons to exit.
#
# Logs: /var/log/slurm/ (slurmctld.log, slurmd.log, slurmdbd.log), /var/log/mysql/error.log.
# Requires Debian 12; start and stop need root (start only when something must change).
set -euo pipefail

PROG=$(basename "$0")
# The daemons and admin tools live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
RUN=/run/remote-magic-slurm
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOGDIR=/var/log/slurm
SOCK=/run/mysqld/mysqld.sock
CLUSTER=localcluster
MIN_JOB_AGE=600

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

case "${SLURM_ACCOUNTING:-slurmdbd}" in
  slurmdbd | "") MODE=slurmdbd ;;
  none) MODE=none ;;
  *) die "SLURM_ACCOUNTING must be 'slurmdbd' (default) or 'none', not '$SLURM_ACCOUNTING'" ;;
esac

NODE=$(hostname -s)

pidfile_of() {
  case $1 in
    munged) echo /run/munge/munged.pid ;;
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    *) echo "/run/$1.pid" ;;
  esac
}

# pid_alive PID NAME: the process exists, is not a zombie, and is called NAME.
pid_alive() {
  [ -n "$1" ] || return 1
  local st
  st=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
  [[ $st =~ ^[^Z][^[:space:]]*[[:space:]]+$2$ ]]
}

running() {  # running NAME: the daemon named in its pid file is alive
  local f pid
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(<"$f")
  pid_alive "$pid" "$1"
}

# retry SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds (false after SECONDS).
retry() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
  return 0
}

show_log() {  # the tail of a log file, to explain a failure
  [ -f "$1" ] || return 0
  echo "--- last lines of $1:" >&2
  tail -n 15 "$1" >&2
}

# launch NAME COMMAND...: start a daemon, its early output to a log (never to our stdout).
launch() {
  local name=$1
  shift
  install -d "$LOGDIR"
  # 9>&-: a daemon must not inherit our lock (it would hold it for its whole life).
  "$@" </dev/null >>"$LOGDIR/$name.start.log" 2>&1 9>&- || {
    show_log "$LOGDIR/$name.start.log"
    die "could not start $name"
  }
}

record_started() {
  mkdir -p "$RUN"
  grep -qx "$1" "$RUN/started" 2>/dev/null || echo "$1" >>"$RUN/started"
}

node_state() { { sinfo -h -n "$NODE" -o %t 2>/dev/null || true; } | head -n 1; }

node_up() {
  case "$(node_state)" in
    idle | mix | alloc | comp) return 0 ;;
    *) return 1 ;;
  esac
}

node_up_or_resume() {
  case "$(node_state)" in
    idle | mix | alloc | comp) return 0 ;;
    drain* | drng* | down* | fail*)
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
      return 1 ;;
    *) return 1 ;;
  esac
}

wanted_conf() {
  local cpus mem acct
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 2048 }' /proc/meminfo)
  if [ "$MODE" = none ]; then
    acct="AccountingStorageType=accounting_storage/none"
  else
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
  fi
  cat <<EOF
# Generated by remote_magic's scripts/slurm.sh: a one-node test cluster. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Keep finished jobs visible to "scontrol show job" for a while (seconds).
MinJobAge=$MIN_JOB_AGE
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start jobs as soon as they are submitted rather than on the next scheduling pass.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
$acct
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

conf_current() { [ -f "$CONF" ] && [ "$(<"$CONF")" = "$(wanted_conf)" ]; }

# Everything up, with the wanted configuration? (read-only; fine for any user)
all_up() {
  conf_current || return 1
  running slurmctld && running slurmd || return 1
  if [ "$MODE" = slurmdbd ]; then
    running slurmdbd || return 1
    mariadb-admin --socket="$SOCK" ping >/dev/null 2>&1 || return 1
  fi
  node_up
}

# stop_daemon NAME: SIGTERM, then SIGKILL after 30 s. Also removes a stale pid file: slurmctld
# and slurmdbd (running as slurm) cannot delete theirs in /run, and Debian's slurmctld prerm
# fails (so the package cannot be removed) while /run/slurmctld.pid exists without a daemon.
stop_daemon() {
  local f pid i
  f=$(pidfile_of "$1")
  [ -s "$f" ] || { rm -f "$f"; return 0; }
  pid=$(<"$f")
  if pid_alive "$pid" "$1" && kill "$pid" 2>/dev/null; then
    for ((i = 0; i < 300; i++)); do
      pid_alive "$pid" "$1" || break
      sleep 0.1
    done
    if pid_alive "$pid" "$1"; then
      say "$1 ($pid) ignored SIGTERM for 30 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    else
      say "stopped $1 ($pid)"
    fi
  fi
  pid_alive "$pid" "$1" || rm -f "$f"
}

install_packages() {
  local pkgs=(slurmctld slurmd slurm-client munge) missing=() p
  [ "$MODE" = none ] || pkgs+=(slurmdbd mariadb-server mariadb-client)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing ${missing[*]}"
  local log apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)
  log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}"; } \
    </dev/null >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    die "apt-get failed"
  fi
  rm -f "$log"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  launch munged runuser -u munge -- /usr/sbin/munged
  record_started munged
  retry 10 sh -c 'munge -n | unmunge' || die "munged did not come up"
}

start_accounting() {
  if ! mariadb-admin --socket="$SOCK" ping >/dev/null 2>&1; then
    if [ ! -d /var/lib/mysql/mysql ]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null 2>&1 ||
        die "mariadb-install-db failed"
    fi
    install -d -o mysql -g mysql /run/mysqld /var/log/mysql
    # mariadbd stays in the foreground: detach it into its own session.
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$SOCK" \
      --pid-file=/run/mysqld/mysqld.pid --log-error=/var/log/mysql/error.log \
      --innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900 \
      </dev/null >>"$LOGDIR/mariadbd.start.log" 2>&1 9>&- &
    record_started mariadbd
    retry 60 mariadb-admin --socket="$SOCK" ping || {
      show_log /var/log/mysql/error.log
      die "MariaDB did not answer on $SOCK"
    }
  fi
  mariadb --socket="$SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
    die "cannot create the MariaDB user slurm (does root get in through $SOCK?)"
  local want
  want=$(cat <<EOF
# Generated by remote_magic's scripts/slurm.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
)
  if [ ! -f "$DBD_CONF" ] || [ "$(<"$DBD_CONF")" != "$want" ]; then
    printf '%s\n' "$want" >"$DBD_CONF"
    running slurmdbd && stop_daemon slurmdbd
  fi
  chown slurm:slurm "$DBD_CONF"
  chmod 600 "$DBD_CONF"
  if ! running slurmdbd; then
    launch slurmdbd slurmdbd
  fi
  retry 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' || {
    show_log "$LOGDIR/slurmdbd.log"
    die "slurmdbd did not listen on 127.0.0.1:6819"
  }
}

start_slurm() {
  install -d -o slurm -g slurm /var/spool/slurmctld "$LOGDIR"
  install -d /var/spool/slurmd
  if ! conf_current; then
    if [ -f "$CONF" ] && ! grep -q "remote_magic's scripts/slurm.sh" "$CONF" &&
      [ ! -e "$CONF.orig" ]; then
      cp -p "$CONF" "$CONF.orig"
      say "kept the previous $CONF as $CONF.orig"
    fi
    wanted_conf >"$CONF"
    chmod 644 "$CONF"
    # Node or accounting changes need restarts; a reconfigure is not enough for those.
    if running slurmctld || running slurmd; then
      say "configuration changed (accounting: $MODE): restarting slurmctld and slurmd"
      stop_daemon slurmd
      stop_daemon slurmctld
    fi
  fi
  local log_offset=""
  if ! running slurmctld; then
    # A state directory left by a cluster of another name makes slurmctld refuse to start.
    local cn=/var/spool/slurmctld/clustername
    if [ -f "$cn" ] && [ "$(<"$cn")" != "$CLUSTER" ]; then rm -f "$cn"; fi
    log_offset=$(stat -c %s "$LOGDIR/slurmctld.log" 2>/dev/null || echo 0)
    launch slurmctld slurmctld
  fi
  if ! running slurmd; then
    launch slurmd slurmd
  fi
  retry 60 node_up_or_resume || {
    show_log "$LOGDIR/slurmctld.log"
    show_log "$LOGDIR/slurmd.log"
    die "node $NODE did not come up (sinfo says '$(node_state)')"
  }
  # A fresh slurmctld schedules nothing for its first ~3 s; its first scheduling pass logs
  # the SchedulerParameters. Waiting for that here makes the first job start as fast as the
  # others (within ~1 s). Only a nicety: carry on if the line never shows.
  if [ -n "$log_offset" ]; then
    # shellcheck disable=SC2016 # $1 and $2 are sh -c's own arguments
    retry 15 sh -c 'tail -c +"$1" "$2" | grep -q "SchedulerParameters="' _ \
      "$((log_offset + 1))" "$LOGDIR/slurmctld.log" || true
  fi
}

report() {
  echo "slurm up: node $NODE ($(nproc) CPUs) in partition debug, accounting=$MODE"
}

cmd_start() {
  if all_up; then report; return 0; fi
  [ "$(id -u)" = 0 ] || die "SLURM is not up (or not as wanted: accounting=$MODE); start it as root"
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another slurm.sh start holds $RUN/lock"
  if all_up; then report; return 0; fi
  install_packages
  start_munge
  [ "$MODE" = none ] || start_accounting
  start_slurm
  report
}

cmd_stop() {
  [ "$(id -u)" = 0 ] || die "stop must run as root"
  local purge=no only=
  case "${1:-}" in
    --purge) purge=yes ;;
    slurmctld | slurmd | slurmdbd) only=$1 ;;
    "") ;;
    *) die "usage: $PROG stop [--purge | slurmctld | slurmd | slurmdbd]" ;;
  esac
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another slurm.sh holds $RUN/lock"
  if [ -n "$only" ]; then stop_daemon "$only"; return 0; fi
  stop_daemon slurmd
  stop_daemon slurmctld
  stop_daemon slurmdbd
  if [ $purge = yes ]; then
    if mariadb-admin --socket="$SOCK" ping >/dev/null 2>&1; then
      mariadb --socket="$SOCK" -e 'DROP DATABASE IF EXISTS slurm_acct_db' &&
        say "dropped the accounting database"
    elif [ -d /var/lib/mysql/slurm_acct_db ]; then
      say "MariaDB is not running: the accounting database was kept"
    fi
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
    say "deleted the job state"
  fi
  if grep -qx mariadbd "$RUN/started" 2>/dev/null; then stop_daemon mariadbd; fi
  if grep -qx munged "$RUN/started" 2>/dev/null; then stop_daemon munged; fi
  rm -f "$RUN/started"
}

cmd_status() {
  local state acct ok=0
  state=$(node_state)
  acct=$(sed -n 's/^AccountingStorageType=accounting_storage\///p' "$CONF" 2>/dev/null || true)
  echo "node $NODE: ${state:-unknown}; accounting: ${acct:-unknown}"
  for d in munged slurmctld slurmd slurmdbd; do
    if running "$d"; then echo "$d: running (pid $(<"$(pidfile_of "$d")"))"; else echo "$d: not running"; fi
  done
  node_up || ok=1
  return $ok
}

case "${1:-}" in
  start) shift; [ $# -eq 0 ] || die "usage: $PROG start"; cmd_start ;;
  stop) shift; cmd_stop "$@" ;;
  status) cmd_status ;;
  *) die "usage: $PROG start | stop [--purge | DAEMON] | status" ;;
esac
