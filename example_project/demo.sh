#!/usr/bin/env bash
# The example project, running: a worker, the fake carrier API, sample jobs, and the admin on
# http://127.0.0.1:8000/.
#
#   PYTHON=/path/to/venv/bin/python bash example_project/demo.sh   (what `make demo` runs)
#
# Environment:
#   REDIS_URL          Redis to use when it answers (default redis://127.0.0.1:6379/0); otherwise
#                      a private redis-server is started on a free port and stopped at exit
#   DEMO_ONESHOT=1     run the sample jobs, print a summary and exit (non-zero unless every
#                      scenario ended as expected within DEMO_TIMEOUT seconds, default 60)
#   DEMO_KEY_PREFIX    Redis key prefix of the demo (default: demo)
#   DEMO_PORT          port of the admin (default: 8000)
#   IMPORT_MAX_RUNTIME seconds a run of the CSV import lasts before it goes back to its queue and
#                      goes on from there (default here: 0.2, so that the summary shows a resume)
#
# The carrier's API is deliveries/fake_carrier.py, started on a free port and stopped at exit; the
# demo gives it a 1-second timeout and a tenth of the guide's retry waits, and it refuses calls
# past twice the project's own limit a second (CARRIER_API_RATE_LIMIT, default 10).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
ONESHOT="${DEMO_ONESHOT:-0}"
TIMEOUT="${DEMO_TIMEOUT:-60}"
PORT="${DEMO_PORT:-8000}"
RUN_DIR="$HERE/.demo"

export ASYNC_JOBS_KEY_PREFIX="${DEMO_KEY_PREFIX:-demo}"
export PYTHONUNBUFFERED=1
unset DATABASE_URL  # the demo always uses example_project/db.sqlite3

WORKER_PID=""
CARRIER_PID=""
TAIL_PID=""
REDIS_PIDFILE=""

log() { printf '==> %s\n' "$*"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$TAIL_PID" ]]; then kill "$TAIL_PID" 2>/dev/null || true; fi
    if [[ -n "$WORKER_PID" ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
        log "stopping the worker (pid $WORKER_PID)"
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$WORKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
        wait "$WORKER_PID" 2>/dev/null || true
    fi
    if [[ -n "$CARRIER_PID" ]] && kill -0 "$CARRIER_PID" 2>/dev/null; then
        log "stopping the fake carrier (pid $CARRIER_PID)"
        kill -TERM "$CARRIER_PID" 2>/dev/null || true
        wait "$CARRIER_PID" 2>/dev/null || true
    fi
    if [[ -n "$REDIS_PIDFILE" && -f "$REDIS_PIDFILE" ]]; then
        local pid
        pid="$(cat "$REDIS_PIDFILE")"
        log "stopping the demo's redis-server (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_answers() {
    "$PY" - "$1" <<'EOF' >/dev/null 2>&1
import sys

import redis

redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()
EOF
}

carrier_answers() {
    "$PY" -c 'import sys; from deliveries.fake_carrier import CarrierControl; sys.exit(not CarrierControl(sys.argv[1]).healthy())' "$1"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

mkdir -p "$RUN_DIR"
cd "$HERE"

# -- Redis -------------------------------------------------------------------------------------
if redis_answers "$REDIS_URL"; then
    log "using Redis at $REDIS_URL"
else
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "Redis does not answer at $REDIS_URL and redis-server is not installed." >&2
        echo "Start Redis, or set REDIS_URL to one that runs." >&2
        exit 1
    fi
    port="$(free_port)"
    REDIS_PIDFILE="$RUN_DIR/redis-$port.pid"
    log "no Redis at $REDIS_URL: starting redis-server on 127.0.0.1:$port (no persistence)"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
        --dir "$RUN_DIR" --pidfile "$REDIS_PIDFILE" --logfile "$RUN_DIR/redis-$port.log"
    REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 1 50); do
        redis_answers "$REDIS_URL" && break
        sleep 0.1
    done
    redis_answers "$REDIS_URL" || { echo "redis-server did not start; see $RUN_DIR/redis-$port.log" >&2; exit 1; }
fi
export REDIS_URL

# -- the carrier's API -------------------------------------------------------------------------
port="$(free_port)"
export CARRIER_API_URL="http://127.0.0.1:$port"
export CARRIER_API_TIMEOUT="${CARRIER_API_TIMEOUT:-1}"
export CARRIER_API_RETRY_WAIT_SCALE="${CARRIER_API_RETRY_WAIT_SCALE:-0.1}"
export CARRIER_API_RATE_LIMIT="${CARRIER_API_RATE_LIMIT:-10}"
export IMPORT_MAX_RUNTIME="${IMPORT_MAX_RUNTIME:-0.2}"
log "starting the fake carrier on $CARRIER_API_URL, allowing $((2 * CARRIER_API_RATE_LIMIT)) calls a second (log: example_project/.demo/carrier.log)"
"$PY" -m deliveries.fake_carrier --port "$port" --slow 3 --rate-limit "$((2 * CARRIER_API_RATE_LIMIT))" >"$RUN_DIR/carrier.log" 2>&1 &
CARRIER_PID=$!
for _ in $(seq 1 50); do
    carrier_answers "$CARRIER_API_URL" && break
    sleep 0.1
done
carrier_answers "$CARRIER_API_URL" || { echo "the fake carrier did not start; see $RUN_DIR/carrier.log" >&2; exit 1; }

# -- database ----------------------------------------------------------------------------------
log "migrating example_project/db.sqlite3"
"$PY" manage.py migrate --noinput -v 0
"$PY" manage.py check

# -- worker ------------------------------------------------------------------------------------
WORKER_LOG="$RUN_DIR/worker.log"
log "starting the worker: python manage.py runworker (log: example_project/.demo/worker.log)"
"$PY" manage.py runworker >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!

# -- sample jobs -------------------------------------------------------------------------------
if [[ "$ONESHOT" == "1" ]]; then
    log "enqueueing the sample jobs and waiting up to ${TIMEOUT}s for them"
    if ! "$PY" manage.py demo --wait "$TIMEOUT"; then
        echo "--- worker log (last 80 lines) ---" >&2
        tail -n 80 "$WORKER_LOG" >&2 || true
        exit 1
    fi
    kill -0 "$WORKER_PID" 2>/dev/null || { echo "the worker exited early" >&2; tail -n 80 "$WORKER_LOG" >&2; exit 1; }
    log "demo finished"
    exit 0
fi

log "enqueueing the sample jobs"
"$PY" manage.py demo --wait "$TIMEOUT" || log "some scenarios did not end as expected; see $WORKER_LOG"
echo
log "admin: http://127.0.0.1:$PORT/admin/  (user admin, password admin); Ctrl-C stops everything"
log "enqueue more: cd example_project && REDIS_URL=$REDIS_URL CARRIER_API_URL=$CARRIER_API_URL $PY manage.py demo"
tail -n 0 -f "$WORKER_LOG" &
TAIL_PID=$!
"$PY" manage.py runserver --noreload "127.0.0.1:$PORT" || true
