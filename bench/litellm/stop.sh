#!/usr/bin/env bash
# Stop the proxy started by start.sh (pid file .run/proxy.pid): SIGTERM to its process
# group (master + workers), SIGKILL after 10 s. Exit 0 also when nothing is running.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIDFILE="$HERE/.run/proxy.pid"
[[ -f "$PIDFILE" ]] || { echo "litellm/stop.sh: not running (no pid file)" >&2; exit 0; }
PID="$(cat "$PIDFILE")"
if [[ ! "$PID" =~ ^[0-9]+$ ]] || ! kill -0 "$PID" 2>/dev/null; then
    echo "litellm/stop.sh: pid $PID not running" >&2; rm -f "$PIDFILE"; exit 0
fi
# start.sh runs the proxy under setsid, so PID is its process-group id.
target="-$PID"
[[ "$(ps -o pgid= -p "$PID" | tr -d ' ')" == "$PID" ]] || target="$PID"
kill -TERM -- "$target" 2>/dev/null
for _ in $(seq 1 50); do
    kill -0 -- "$target" 2>/dev/null || break
    sleep 0.2
done
if kill -0 -- "$target" 2>/dev/null; then
    echo "litellm/stop.sh: still alive after 10s, SIGKILL" >&2
    kill -KILL -- "$target" 2>/dev/null
fi
rm -f "$PIDFILE"
echo "litellm/stop.sh: stopped pid $PID" >&2
