#!/usr/bin/env bash
# Colloquy's benchmarks (issue #8): builds the server and the load generator in release, starts
# PostgreSQL and Redis when they are installed but down, creates a fresh database, seeds it,
# runs every scenario against a real server on loopback and writes BENCHMARKS.md at the root.
# See bench/README.md.
#
#   bench/run.sh                       every scenario, full size (about 6 to 8 minutes)
#   QUICK=1 bench/run.sh               a short smoke run with small numbers
#   SCENARIOS="relay reads" bench/run.sh
#
# Options (environment): SCENARIOS (default "relay baseline peer reads idle logins"), QUICK,
# OUTPUT (default BENCHMARKS.md), SERVER_PORT, UPSTREAM_PORT, PEER_PORT, DB_NAME, PG_URL,
# REDIS_URL, KEEP_WORK=1 (keep logs and results in the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# The exact command, for the report: the options given, then the script.
COMMAND=""
for var in SCENARIOS QUICK OUTPUT SERVER_PORT UPSTREAM_PORT PEER_PORT DB_NAME PG_URL REDIS_URL; do
  if [ -n "${!var+x}" ]; then COMMAND+="$var=\"${!var}\" "; fi
done
COMMAND+="bench/run.sh"

SCENARIOS=${SCENARIOS:-"relay baseline peer reads idle logins"}
QUICK=${QUICK:-0}
OUTPUT=${OUTPUT:-$ROOT/BENCHMARKS.md}
SERVER_PORT=${SERVER_PORT:-18080}
UPSTREAM_PORT=${UPSTREAM_PORT:-19100}
PEER_PORT=${PEER_PORT:-19200}
DB_NAME=${DB_NAME:-colloquy_bench}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
SERVER=http://127.0.0.1:$SERVER_PORT
UPSTREAM=http://127.0.0.1:$UPSTREAM_PORT/v1

if [ "$QUICK" = 1 ]; then
  RELAY_LEVELS=10,50; RELAY_ROUNDS=1; MAX_CLIENTS=10; MAX_CHUNKS=200
  SEED_CONVERSATIONS=10000; READ_SECS=3; READ_PERCENTS=50,70; IDLE_SUBS=500; LOGIN_SECS=3
else
  RELAY_LEVELS=10,100,200,500; RELAY_ROUNDS=3; MAX_CLIENTS=50; MAX_CHUNKS=500
  SEED_CONVERSATIONS=10000; READ_SECS=15; READ_PERCENTS=25,50,70,90; IDLE_SUBS=10000; LOGIN_SECS=15
fi

WORK=$(mktemp -d /tmp/colloquy-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
NOTES=()
PIDS=()
SERVER_PID=
PEER_STARTED=
STARTED_AT=$(date +%s)
# Anything else running on the machine weighs on every figure: record how busy it was.
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { echo "bench $(date +%H:%M:%S): $*" >&2; }

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  stop_peer
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$status" != 0 ]; then
    log "logs and results kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start.sh runs LiteLLM in a process group of its own (master and workers); stop.sh ends it.
stop_peer() {
  [ -n "$PEER_STARTED" ] || return 0
  bash bench/litellm/stop.sh >/dev/null 2>&1 || true
  PEER_STARTED=
}

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
    listening "$port" && return 0
    sleep 0.5
  done
  log "$name did not come up on 127.0.0.1:$port"
  return 1
}

# Like .ci/run, but never installs anything.
ensure_postgres() {
  listening 5432 && return 0
  ls /etc/postgresql/*/main >/dev/null 2>&1 || { log "PostgreSQL is neither running nor installed"; return 1; }
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for_port 5432 PostgreSQL
}

ensure_redis() {
  listening 6379 && return 0
  command -v redis-server >/dev/null 2>&1 || { log "Redis is neither running nor installed"; return 1; }
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for_port 6379 Redis
}

# Idle subscriptions need one descriptor per socket on both ends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "file limit $(ulimit -n); work directory $WORK"

log "building the server and the load generator (release)"
cargo build --release --quiet
(cd bench/loadgen && cargo build --release --quiet)
COLLOQUY=$ROOT/target/release/colloquy
LOADGEN=$ROOT/bench/loadgen/target/release/loadgen

ensure_postgres
ensure_redis

cat > "$WORK/catalog.toml" <<EOF
# The fake upstream, as an OpenAI-compatible provider.
[[providers]]
name = "bench"
wire = "openai"
base_url = "$UPSTREAM"
needs_key = false

[[models]]
id = "bench/fake"
provider = "bench"
upstream = "bench"
display_name = "Fake upstream (benchmarks)"
context_window = 131072
max_output_tokens = 4096
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0
EOF

log "starting the fake upstream on $UPSTREAM"
"$LOADGEN" upstream --listen "127.0.0.1:$UPSTREAM_PORT" > "$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_for_port "$UPSTREAM_PORT" "the fake upstream"

log "creating the database $DB_NAME"
psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" -c "CREATE DATABASE $DB_NAME" >/dev/null

# Limits high enough that they are never what is measured; everything else at its default.
start_server() {
  (
    cd "$WORK"
    exec env \
      COLLOQUY_ENV=development \
      BIND_ADDR="127.0.0.1:$SERVER_PORT" \
      DATABASE_URL="$PG_URL/$DB_NAME" \
      REDIS_URL="$REDIS_URL" \
      JWT_SECRET=colloquy-benchmarks-jwt-secret-0123456789abcdef \
      ACCESS_TOKEN_TTL_SECS=3600 \
      LOGIN_LIMIT_PER_EMAIL=60000000 LOGIN_LIMIT_PER_IP=60000000 \
      RATE_LIMIT_GENERATIONS_PER_MIN=60000000 RATE_LIMIT_GENERATIONS_BURST=1000000 \
      RATE_LIMIT_MUTATIONS_PER_MIN=60000000 RATE_LIMIT_QUERIES_PER_MIN=60000000 \
      RATE_LIMIT_WS_SUBSCRIBES_PER_MIN=60000000 \
      RATE_LIMIT_KEY_PREFIX=colloquy-bench:rl \
      WS_MAX_CONNECTIONS_PER_USER=1000000 \
      QUOTA_DEFAULT_TOKEN_LIMIT=unlimited \
      MODEL_CATALOG_FILE="$WORK/catalog.toml" \
      RUST_LOG=warn \
      "$COLLOQUY" serve
  ) >> "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 120); do
    if curl -sf "$SERVER/readyz" >/dev/null 2>&1; then
      log "server ready (pid $SERVER_PID)"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { log "the server exited; see $WORK/server.log"; tail -n 20 "$WORK/server.log" >&2; return 1; }
    sleep 0.5
  done
  log "the server never became ready"
  return 1
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# Each scenario gets a freshly started server, so one's leftovers never weigh on the next.
if has relay; then
  start_server
  log "scenario 1: relay ($RELAY_LEVELS chats, $RELAY_ROUNDS rounds)"
  "$LOADGEN" relay --server "$SERVER" --server-pid "$SERVER_PID" --run-id relay \
    --concurrency "$RELAY_LEVELS" --rounds "$RELAY_ROUNDS" --out "$RESULTS"
  log "scenario 1: relay at the maximum rate ($MAX_CLIENTS chats × $MAX_CHUNKS chunks, no interval)"
  "$LOADGEN" relay --server "$SERVER" --server-pid "$SERVER_PID" --run-id relay-max \
    --concurrency "$MAX_CLIENTS" --rounds 1 --ramp-ms 0 --mode max \
    --chunks "$MAX_CHUNKS" --interval-ms 0 --out "$RESULTS"
  stop_server
fi

if has baseline; then
  log "scenario 2: baseline, the fake upstream read directly"
  "$LOADGEN" direct --base-url "$UPSTREAM" --source upstream --pid "$UPSTREAM_PID" \
    --concurrency "$RELAY_LEVELS" --rounds "$RELAY_ROUNDS" --out "$RESULTS"
  "$LOADGEN" direct --base-url "$UPSTREAM" --source upstream --pid "$UPSTREAM_PID" \
    --concurrency "$MAX_CLIENTS" --rounds 1 --ramp-ms 0 --mode max \
    --chunks "$MAX_CHUNKS" --interval-ms 0 --out "$RESULTS"
fi

# The peer: LiteLLM in front of the same fake upstream, read by the same client as the baseline.
run_peer() {
  [ -f bench/litellm/setup.sh ] && [ -f bench/litellm/start.sh ] \
    || { NOTES+=("Peer scenario skipped: bench/litellm/ (the LiteLLM setup) is not in this checkout."); return 0; }
  log "scenario 3: installing LiteLLM if needed (bench/litellm/setup.sh)"
  bash bench/litellm/setup.sh > "$WORK/litellm-setup.log" 2>&1 \
    || { NOTES+=("Peer scenario skipped: bench/litellm/setup.sh failed: $(tail -n 1 "$WORK/litellm-setup.log" | tr -d '`|')"); return 0; }
  log "scenario 3: starting LiteLLM on 127.0.0.1:$PEER_PORT (bench/litellm/start.sh)"
  PEER_STARTED=1
  # Output to files, not a pipe: the proxy left running could hold a pipe open.
  bash bench/litellm/start.sh "$PEER_PORT" "$UPSTREAM" > "$WORK/litellm-start.out" 2> "$WORK/litellm-start.log" \
    || { NOTES+=("Peer scenario skipped: bench/litellm/start.sh failed: $(tail -n 1 "$WORK/litellm-start.log" | tr -d '`|')"); return 0; }
  local pid
  pid=$(grep -E '^[0-9]+$' "$WORK/litellm-start.out" | tail -n 1 || true)
  [ -n "$pid" ] || { NOTES+=("Peer scenario skipped: bench/litellm/start.sh printed no pid."); return 0; }
  log "scenario 3: peer, LiteLLM (pid $pid, workers included in its figures)"
  "$LOADGEN" direct --base-url "http://127.0.0.1:$PEER_PORT/v1" --api-key sk-bench --model bench \
    --source litellm --pid "$pid" \
    --concurrency "$RELAY_LEVELS" --rounds "$RELAY_ROUNDS" --out "$RESULTS"
  log "scenario 3: LiteLLM at the maximum rate ($MAX_CLIENTS chats × $MAX_CHUNKS chunks, no interval)"
  "$LOADGEN" direct --base-url "http://127.0.0.1:$PEER_PORT/v1" --api-key sk-bench --model bench \
    --source litellm --pid "$pid" \
    --concurrency "$MAX_CLIENTS" --rounds 1 --ramp-ms 0 --mode max \
    --chunks "$MAX_CHUNKS" --interval-ms 0 --out "$RESULTS"
  stop_peer
}
has peer && run_peer

if has reads || has logins; then
  start_server
  log "seeding $SEED_CONVERSATIONS conversations × 20 messages"
  "$LOADGEN" register --server "$SERVER" --email reader@bench.test
  psql -q -X "$PG_URL/$DB_NAME" -v email=reader@bench.test -v conversations="$SEED_CONVERSATIONS" \
    -v per_conversation=20 -f bench/seed.sql
  # Vacuumed and checkpointed now, so autovacuum and the checkpointer do not run in the
  # middle of the measurements (they did: a read p99 of 30 ms without any login).
  psql -q -X "$PG_URL/$DB_NAME" -c "VACUUM (ANALYZE) conversations" -c "VACUUM (ANALYZE) messages" \
    -c "CHECKPOINT" >/dev/null || log "could not vacuum or checkpoint after seeding"
  if has reads; then
    log "scenario 4: reads"
    "$LOADGEN" reads --server "$SERVER" --server-pid "$SERVER_PID" --duration "$READ_SECS" --percents "$READ_PERCENTS" --out "$RESULTS"
  fi
  if has logins; then
    if ! has reads; then
      # The logins' read rate is a share of the maximum measured here.
      "$LOADGEN" reads --server "$SERVER" --duration "$READ_SECS" --percents 50 --out "$RESULTS"
    fi
    log "scenario 6: logins during reads at 50 % of the maximum"
    "$LOADGEN" logins --server "$SERVER" --percent 50 --duration "$LOGIN_SECS" --out "$RESULTS"
  fi
  stop_server
fi

if has idle; then
  start_server
  log "scenario 5: $IDLE_SUBS idle subscriptions"
  "$LOADGEN" idle --server "$SERVER" --server-pid "$SERVER_PID" --subscriptions "$IDLE_SUBS" --out "$RESULTS"
  stop_server
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src migrations Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT+=" (with uncommitted changes under src/ or the manifests)"
fi
ELAPSED=$(( $(date +%s) - STARTED_AT ))
[ "$QUICK" = 1 ] && NOTES+=("QUICK=1: a smoke run with small numbers; the targets are defined for the full run.")
NOTES+=("Load average (1, 5, 15 min) when the run started: $LOAD_AT_START; when it ended: $(cut -d' ' -f1-3 /proc/loadavg).")
NOTE_ARGS=()
for n in "${NOTES[@]}"; do NOTE_ARGS+=(--note "$n"); done
"$LOADGEN" report --results "$RESULTS" --output "$OUTPUT" --commit "$COMMIT" \
  --command "$COMMAND" --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --duration "$((ELAPSED / 60)) min $((ELAPSED % 60)) s (builds included)" "${NOTE_ARGS[@]}"
# The record of what profiling found and what changed, kept by hand in bench/findings.md.
if [ -f bench/findings.md ]; then
  { echo; cat bench/findings.md; } >> "$OUTPUT"
fi
