#!/usr/bin/env bash
# sge.sh - a real, single-host Son of Grid Engine cell on this machine, for the scheduler tests.
#
#   scripts/sge.sh start    install (if needed), configure and start; wait until all.q takes jobs
#   scripts/sge.sh stop     stop sge_execd and sge_qmaster (configuration and accounting stay)
#   scripts/sge.sh status   print the queue; exit 0 only when all.q on this host takes jobs
#
# The cell: Debian 12's Grid Engine 8.1.9 (gridengine-master, -exec, -client; their postinst
# creates the cell "default" under /var/lib/gridengine), this host as master, submit and
# execution host, one queue all.q with nproc slots and no load thresholds, a one-second
# scheduling interval and accounting written at once (so `qacct -j ID` works a moment after a
# job ends). Jobs of root are allowed (min_uid/min_gid 0), so tests running as root can submit.
# Any local user can use qsub/qstat/qdel/qacct afterwards; Debian's wrappers need no SGE_ROOT.
# The daemons listen on TCP 6444 (qmaster) and 6445 (execd), which must be free.
#
# start is idempotent. When both daemons run, the queue is up and the configuration this script
# applies is in place (remembered in /run/remote-magic-sge/configured), it only looks (a fraction
# of a second; no root needed). Otherwise, as root, it
#   1. installs the missing Debian packages (--no-install-recommends; they pull in exim4),
#   2. makes this host's names one SGE host (see host names below),
#   3. starts sge_qmaster if not running, and applies the configuration (each step idempotent),
#   4. starts sge_execd if not running, and waits until all.q@HOST shows no state flags.
#
# Host names: SGE compares the name a client resolves for itself with the names it knows. Here
# 127.0.0.1 reverse-resolves to "localhost" while `hostname` says something else, and every
# client then fails with "access denied ... client IP resolved to host name localhost". The
# cell's host_aliases file makes `hostname`, "localhost" and the other names of 127.0.0.1 one
# host. `hostname` must resolve (it does through /etc/hosts on Debian).
#
# Gotchas seen on this machine:
# * `qsub -b y COMMAND` needs -N NAME when the command is not a plain word (e.g. 'sh -c "x; y"'):
#   without it the job name derived from the command is invalid and qsub fails with "Error
#   reading answer list from qmaster".
# * `qsub -b y CMD ARGS...` joins ARGS with spaces and a shell parses the line again on the
#   host: quote each argument (`sh -c "'exit 3'"`; unquoted it runs `sh -c exit 3`).
# * A job runs in the submitter's home directory unless -cwd (or -wd) is given; a user without
#   a home directory gets error state Eqw, and `qsub -sync y` then waits forever.
# * Jobs of users below min_uid (100 by default, so root) stay queued forever; we set it to 0.
# * PID 1 here reaps orphans only every ~2 s: liveness checks below ignore zombies.
#
# Logs: /var/spool/gridengine/qmaster/messages, /var/spool/gridengine/execd/*/messages.
# Requires Debian 12; start (when something must change) and stop need root.
set -euo pipefail

PROG=$(basename "$0")
# The daemons and admin tools live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
RUN=/run/remote-magic-sge
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid
CONFIG_VERSION=3  # bump when the configuration applied below changes

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

HOST=$(hostname)
SLOTS=$(nproc)
SIGNATURE="v$CONFIG_VERSION host=$HOST slots=$SLOTS"

pid_alive() {  # pid_alive PID NAME: exists, not a zombie, called NAME
  [ -n "$1" ] || return 1
  local st
  st=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
  [[ $st =~ ^[^Z][^[:space:]]*[[:space:]]+$2$ ]]
}

file_alive() {  # file_alive PIDFILE NAME
  [ -s "$1" ] && pid_alive "$(<"$1")" "$2"
}

execd_pidfile() {  # the pid file of a live sge_execd (its spool dir is named as SGE resolves us)
  local f
  for f in /var/spool/gridengine/execd/*/execd.pid; do
    if file_alive "$f" sge_execd; then echo "$f"; return 0; fi
  done
  return 1
}

retry() {  # retry SECONDS COMMAND...: until it succeeds, every 0.2 s
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# all.q@HOST is listed with exactly five columns: no state flags (u, d, E, a, ...).
queue_ok() {
  qstat -f -q "all.q@$HOST" 2>/dev/null |
    awk -v q="all.q@$HOST" '$1 == q && NF == 5 { ok = 1 } END { exit !ok }'
}

all_up() {
  [ "$(cat "$RUN/configured" 2>/dev/null)" = "$SIGNATURE" ] || return 1
  file_alive "$QMASTER_PID" sge_qmaster || return 1
  execd_pidfile >/dev/null || return 1
  queue_ok
}

install_packages() {
  local missing=() p
  for p in gridengine-master gridengine-exec gridengine-client; do
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

set_host_names() {
  getent hosts "$HOST" >/dev/null || die "this host's name '$HOST' does not resolve; add it to /etc/hosts"
  [ -f "$COMMON/bootstrap" ] ||
    die "no Grid Engine cell in $COMMON (try: dpkg-reconfigure gridengine-master)"
  local others
  others=$( { echo localhost; getent hosts 127.0.0.1 | awk '{ for (i = 2; i <= NF; i++) print $i }'; } |
    grep -vxF "$HOST" | sort -u | tr '\n' ' ')
  echo "$HOST" >"$COMMON/act_qmaster"
  echo "$HOST ${others% }" >"$COMMON/host_aliases"
}

qc() {  # qconf with its chatter ("added ...", "modified ...") shown only when it fails
  local out
  out=$(qconf "$@" 2>&1) || { echo "$out" >&2; die "qconf $1 failed"; }
}

configure() {
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'; trap - RETURN" RETURN

  qconf -ss 2>/dev/null | grep -qxF "$HOST" || qc -as "$HOST"

  # Global configuration: root may run jobs, load reports every 5 s, accounting written at once.
  qconf -sconf global |
    awk '/^reporting_params/ { cont = 1 } cont { cont = /\\$/; next } { print }' |
    sed -E -e 's/^(min_uid|min_gid)[[:space:]].*/\1 0/' \
      -e 's/^load_report_time[[:space:]].*/load_report_time 00:00:05/' >"$tmp/global"
  echo "reporting_params accounting=true reporting=false flush_time=00:00:01" \
    "accounting_flush_time=00:00:00 joblog=false sharelog=00:00:00" >>"$tmp/global"
  qc -Mconf "$tmp/global"

  # Scheduler: a pass every second, and right after each submission and job end.
  qconf -ssconf | sed -E -e 's/^schedule_interval[[:space:]].*/schedule_interval 0:0:1/' \
    -e 's/^(flush_submit_sec|flush_finish_sec)[[:space:]].*/\1 1/' >"$tmp/sched"
  qc -Msconf "$tmp/sched"

  if ! qconf -se "$HOST" >/dev/null 2>&1; then
    {
      echo "hostname $HOST"
      for k in load_scaling complex_values user_lists xuser_lists projects xprojects \
        usage_scaling report_variables; do echo "$k NONE"; done
    } >"$tmp/exechost"
    qc -Ae "$tmp/exechost"
  fi

  if ! qconf -shgrp @allhosts >/dev/null 2>&1; then
    printf 'group_name @allhosts\nhostlist %s\n' "$HOST" >"$tmp/hgrp"
    qc -Ahgrp "$tmp/hgrp"
  fi

  # A parallel environment "smp" (all slots of one host), so that jobs can ask for cores.
  if ! qconf -sp smp >/dev/null 2>&1; then
    printf '%s\n' "pe_name smp" "slots 9999" "user_lists NONE" "xuser_lists NONE" \
      "start_proc_args NONE" "stop_proc_args NONE" 'allocation_rule $pe_slots' \
      "control_slaves FALSE" "job_is_first_task TRUE" "urgency_slots min" \
      "accounting_summary FALSE" "qsort_args NONE" >"$tmp/pe"
    qc -Ap "$tmp/pe"
  fi

  # all.q from the template queue; re-applied so that a changed slot count is taken over.
  # unix_behavior: a job runs by its script's own #! line, not as a login shell (a login
  # shell runs ~/.bashrc, which can be slow, and a job killed in it can leave locks behind).
  qconf -sq | sed -E -e 's/^qname[[:space:]].*/qname all.q/' \
    -e 's/^hostlist[[:space:]].*/hostlist @allhosts/' \
    -e "s/^slots[[:space:]].*/slots $SLOTS/" \
    -e 's#^shell[[:space:]].*#shell /bin/bash#' \
    -e 's/^pe_list[[:space:]].*/pe_list smp/' \
    -e 's/^shell_start_mode[[:space:]].*/shell_start_mode unix_behavior/' \
    -e 's/^load_thresholds[[:space:]].*/load_thresholds NONE/' >"$tmp/queue"
  if qconf -sq all.q >/dev/null 2>&1; then
    qc -Mq "$tmp/queue"
  else
    qc -Aq "$tmp/queue"
  fi
}

cmd_start() {
  if all_up; then
    echo "sge up: queue all.q@$HOST ($SLOTS slots)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "Grid Engine is not up (or not configured by this script); start it as root"
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another sge.sh holds $RUN/lock"
  if all_up; then
    echo "sge up: queue all.q@$HOST ($SLOTS slots)"
    return 0
  fi
  install_packages
  set_host_names
  if ! file_alive "$QMASTER_PID" sge_qmaster; then
    /usr/sbin/sge_qmaster </dev/null >/dev/null 2>&1 9>&- || die "sge_qmaster did not start"
  fi
  retry 60 qstat || {
    tail -n 15 /var/spool/gridengine/qmaster/messages >&2 2>/dev/null || true
    die "sge_qmaster does not answer (qstat fails)"
  }
  rm -f "$RUN/configured"
  configure
  if ! execd_pidfile >/dev/null; then
    /usr/sbin/sge_execd </dev/null >/dev/null 2>&1 9>&- || die "sge_execd did not start"
  fi
  retry 60 queue_ok || {
    qstat -f >&2 || true
    tail -n 15 /var/spool/gridengine/execd/*/messages >&2 2>/dev/null || true
    die "queue all.q@$HOST did not come up"
  }
  echo "$SIGNATURE" >"$RUN/configured"
  echo "sge up: queue all.q@$HOST ($SLOTS slots)"
}

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM, SIGKILL after 30 s
  local pid i
  [ -s "$1" ] || return 0
  pid=$(<"$1")
  pid_alive "$pid" "$2" || return 0
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    pid_alive "$pid" "$2" || { say "stopped $2 ($pid)"; return 0; }
    sleep 0.1
  done
  say "$2 ($pid) ignored SIGTERM for 30 s; killing it"
  kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  [ "$(id -u)" = 0 ] || die "stop must run as root"
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another sge.sh holds $RUN/lock"
  local f
  for f in /var/spool/gridengine/execd/*/execd.pid; do stop_pidfile "$f" sge_execd; done
  stop_pidfile "$QMASTER_PID" sge_qmaster
  rm -f "$RUN/configured"
}

cmd_status() {
  if ! command -v qstat >/dev/null 2>&1; then echo "Grid Engine is not installed"; return 1; fi
  qstat -f 2>&1 || true
  queue_ok
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $PROG start | stop | status" ;;
esac
