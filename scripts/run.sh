#!/usr/bin/env bash
# Starts herald's four services on 127.0.0.1, data in ./data, and stops them
# all on Ctrl-C (SIGTERM to each, in reverse order of start).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
DATA=${HERALD_DATA_DIR:-$PWD/data/tracker}
mkdir -p "$DATA"

export HERALD_TRACKER_ADDR=${HERALD_TRACKER_ADDR:-127.0.0.1:7301}
export HERALD_QUEUE_ADDR=${HERALD_QUEUE_ADDR:-127.0.0.1:7302}
export HERALD_PLUGINS_ADDR=${HERALD_PLUGINS_ADDR:-127.0.0.1:7303}
GATEWAY=${HERALD_GATEWAY_LISTEN:-127.0.0.1:7300}

pids=()
stop() {
  trap - INT TERM
  echo "herald: stopping (SIGTERM to each service)..."
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  echo "herald: stopped"
}
trap stop INT TERM

wait_port() {
  local addr=$1 name=$2
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "herald: $name did not start listening on $addr; see its log above" >&2
  stop; exit 1
}

"$BIN/herald-tracker" --listen "$HERALD_TRACKER_ADDR" --data-dir "$DATA" & pids+=($!)
wait_port "$HERALD_TRACKER_ADDR" tracker
"$BIN/herald-plugins" --listen "$HERALD_PLUGINS_ADDR" & pids+=($!)
wait_port "$HERALD_PLUGINS_ADDR" plugins
"$BIN/herald-queue" --listen "$HERALD_QUEUE_ADDR" & pids+=($!)
wait_port "$HERALD_QUEUE_ADDR" queue
"$BIN/herald-gateway" --listen "$GATEWAY" & pids+=($!)
wait_port "$GATEWAY" gateway

cat <<MSG

herald is running:
  gateway  $GATEWAY   (public API: herald.gateway.v1.GatewayService)
  tracker  $HERALD_TRACKER_ADDR   (data: $DATA)
  queue    $HERALD_QUEUE_ADDR
  plugins  $HERALD_PLUGINS_ADDR
Try:  bin/herald send --channel mock --to ok --conversation c1 --text hello
      bin/herald status
Ctrl-C stops all four.
MSG
wait
