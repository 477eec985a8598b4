#!/usr/bin/env bash
# Start the LiteLLM proxy (offline, no DB) in the background for benchmarking.
#
#   start.sh <listen_port> <upstream_base_url>
#     upstream_base_url: OpenAI-compatible base, e.g. http://127.0.0.1:18080/v1
#                        (LiteLLM calls <base>/chat/completions)
#
# Model "bench" -> openai/bench at <upstream_base_url> (api_key sk-upstream); master key sk-bench.
# Listens on 127.0.0.1:<listen_port>. Output -> bench/litellm/proxy.log.
# Waits (<= LITELLM_START_TIMEOUT s, default 120; typically ~40 s, see README) until /health/liveliness answers AND every
# worker has logged "Application startup complete"; prints the master PID as the last stdout line.
#
# Env knobs:
#   LITELLM_WORKERS   uvicorn workers (default: CPUs available = nproc, or the size of LITELLM_CPUSET)
#   LITELLM_CPUSET    e.g. "0-1" or "1": run the proxy under `taskset -c` (same cores as the peer)
#   LITELLM_KEEPALIVE_TIMEOUT  idle HTTP keep-alive, s (default 75; uvicorn's default 5 s / gunicorn's 2 s race
#                     with pooled client connections -> "connection reset" on reuse)
#   LITELLM_GUNICORN  1 = --run_gunicorn instead of uvicorn: starts faster (~15 s, one import then
#                     fork) but logs every request and keeps gunicorn's 2 s keep-alive (not settable)
#   LITELLM_WORKER_HEALTHCHECK_TIMEOUT  uvicorn worker ping timeout, s (default 120; see launch.py)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
RUN="$HERE/.run"
LOG="$HERE/proxy.log"
PIDFILE="$RUN/proxy.pid"
TIMEOUT="${LITELLM_START_TIMEOUT:-120}"

die() { echo "litellm/start.sh: ERROR: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 <listen_port> <upstream_base_url>"
PORT="$1"; UPSTREAM="$2"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port '$PORT'"
[[ "$UPSTREAM" =~ ^https?:// ]] || die "upstream must be an http(s) URL, got '$UPSTREAM'"

# Install if needed (idempotent; its chatter goes to stderr so stdout stays "PID last").
"$HERE/setup.sh" >&2 || die "setup.sh failed"

mkdir -p "$RUN"
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    die "already running (pid $(cat "$PIDFILE")); run $HERE/stop.sh first"
fi
if "$VENV/bin/python" - "$PORT" <<'EOF'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
then die "port $PORT on 127.0.0.1 is already in use"; fi

# Render config.
UPSTREAM_BASE_URL="$UPSTREAM" "$VENV/bin/python" - "$HERE/config.yaml.tmpl" "$RUN/config.yaml" <<'EOF'
import os, string, sys
src, dst = sys.argv[1], sys.argv[2]
open(dst, "w").write(string.Template(open(src).read()).substitute(os.environ))
EOF

# Workers: LiteLLM's production guidance is one worker per available CPU (--num_workers $(nproc)).
TASKSET=()
if [[ -n "${LITELLM_CPUSET:-}" ]]; then
    command -v taskset >/dev/null || die "LITELLM_CPUSET set but taskset not found"
    TASKSET=(taskset -c "$LITELLM_CPUSET")
    NCPU="$(taskset -c "$LITELLM_CPUSET" nproc)"
else
    NCPU="$(nproc)"
fi
WORKERS="${LITELLM_WORKERS:-$NCPU}"
SERVER_ARGS=(--log_config "$HERE/log_config.json" --keepalive_timeout "${LITELLM_KEEPALIVE_TIMEOUT:-75}")
[[ "${LITELLM_GUNICORN:-0}" == 1 ]] && SERVER_ARGS=(--run_gunicorn)

# Offline + quiet environment. No DATABASE_URL -> no Prisma/DB; no UI needed.
ENVV=(
    LITELLM_LOCAL_MODEL_COST_MAP=True     # don't fetch the model cost map at import
    LITELLM_TELEMETRY=False
    LITELLM_LOG=ERROR                     # litellm's own loggers
    LITELLM_MODE=PRODUCTION               # don't load a .env from cwd
    DISABLE_ADMIN_UI=True
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    NO_PROXY='*' no_proxy='*'             # upstream is local: bypass any http(s)_proxy
    PYTHONUNBUFFERED=1
)

: > "$LOG"
T0="$(date +%s.%N)"
cd "$RUN"
# setsid: own process group, so stop.sh can take down the master and its workers together.
env -u DATABASE_URL -u DIRECT_URL -u REDIS_HOST -u REDIS_URL "${ENVV[@]}" \
    setsid "${TASKSET[@]}" "$VENV/bin/python" "$HERE/launch.py" \
        --config "$RUN/config.yaml" --host 127.0.0.1 --port "$PORT" \
        --num_workers "$WORKERS" --telemetry False "${SERVER_ARGS[@]}" \
        >>"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" > "$PIDFILE"
echo "$PORT" > "$RUN/port"

have_curl=0; command -v curl >/dev/null && have_curl=1
alive() {
    if (( have_curl )); then
        curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$PORT/health/liveliness" 2>/dev/null
    else
        "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health/liveliness', timeout=2)" 2>/dev/null
    fi
}

deadline=$(( $(date +%s) + TIMEOUT ))
ready=0
while (( $(date +%s) < deadline )); do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "litellm/start.sh: proxy exited during startup; tail of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        rm -f "$PIDFILE"; exit 1
    fi
    if alive; then
        if [[ "${LITELLM_GUNICORN:-0}" == 1 ]] \
           || (( $(grep -c 'Application startup complete' "$LOG" || true) >= WORKERS )); then
            ready=1; break
        fi
    fi
    sleep 0.2
done
if (( ! ready )); then
    echo "litellm/start.sh: proxy not ready within ${TIMEOUT}s; tail of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    "$HERE/stop.sh" >&2 || true
    exit 1
fi
T1="$(date +%s.%N)"
printf 'litellm/start.sh: LiteLLM %s ready on http://127.0.0.1:%s (%s workers%s) in %.1fs; log %s\n' \
    "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')" \
    "$PORT" "$WORKERS" "${LITELLM_CPUSET:+, cpus $LITELLM_CPUSET}" "$(awk "BEGIN{print $T1 - $T0}")" "$LOG" >&2
echo "$PID"
