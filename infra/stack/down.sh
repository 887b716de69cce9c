#!/usr/bin/env bash
# `make stack-down`: stop exactly what infra/stack/up.sh started, newest first. Each service was
# started in a process group of its own (its pid file names the group's leader), so stopping the
# group also stops what it started: uvicorn workers, Airflow task processes and their
# spark-submit, Spark executors and Python workers. PostgreSQL stops through pg_ctl (a fast
# shutdown). Then checks that no process of the stack is left and its ports are free; exits
# non-zero if one is. State and data stay in out/stack/ (rm -rf it for a fresh stack).
set -uo pipefail
source "$(dirname "$0")/common.sh"

group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

stop_group() { # name pgid
  local name=$1 pgid=$2 t0=$SECONDS
  kill -TERM -- "-$pgid" 2>/dev/null || return 0
  while group_alive "$pgid" && ((SECONDS - t0 < 30)); do sleep 0.5; done
  if group_alive "$pgid"; then
    say "$name did not stop in 30s: killing its process group"
    kill -KILL -- "-$pgid" 2>/dev/null
    sleep 1
  fi
}

left=0
for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
  name=${SERVICES[$i]}
  f=$RUN/$name.pid
  [[ -s $f ]] || continue
  pid=$(cat "$f")
  if [[ $name == postgres ]]; then
    if kill -0 "$pid" 2>/dev/null; then
      if [[ $EUID -eq 0 ]]; then runuser -u "$PG_USER" -- "$PG_BIN/pg_ctl" -D "$STACK/postgres/data" -m fast -w stop >/dev/null
      else "$PG_BIN/pg_ctl" -D "$STACK/postgres/data" -m fast -w stop >/dev/null; fi
    fi
    for _ in {1..20}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done # the pid file goes first
    if kill -0 "$pid" 2>/dev/null; then say "postgres (pid $pid) is still running"; left=1; else rm -f "$f"; say "postgres stopped"; fi
    continue
  fi
  stop_group "$name" "$pid"
  if group_alive "$pid"; then
    say "$name: processes left in group $pid: $(pgrep -g "$pid" | tr '\n' ' ')"
    left=1
  else
    rm -f "$f"
    say "$name stopped"
  fi
done
for port in "${ALL_PORTS[@]}"; do
  if port_taken "$port"; then say "port $port is still in use"; left=1; fi
done
((left == 0)) && say "no process of the stack is left" || { say "error: the stack did not stop cleanly"; exit 1; }
