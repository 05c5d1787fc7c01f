#!/usr/bin/env bash
# Where the time of an upgrade goes (BENCHMARKS.md, "Phases of an upgrade"):
#
#   cargo build --release --example http
#   examples/phases/run.sh OUT N [load|idle]   # N upgrades, 1 s apart, perf sched recording all CPUs
#   python3 examples/phases/analyze.py OUT     # per-phase medians, CPU vs waiting of the new process
#
# The release `http` example serves with its log (µs timestamps) in OUT/log; with `load`, wrk
# (64 connections, a new connection per request) saturates it meanwhile. send_signals.py sends the
# upgrade signals from one process, timestamping each right before kill(2) (a shell's `date`
# fork costs milliseconds under load and would blur the first phase). `perf sched` (root, or
# perf_event_paranoid <= 0) gives how long the new process's threads ran and waited for a CPU.
set -euo pipefail
OUT=$1; N=$2; MODE=${3:-load}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../../target/release/examples/http}
mkdir -p "$OUT"; rm -f "$OUT"/*
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PORT=$(port); APORT=$(port)
HOTEXEC_PID_FILE=$OUT/pid HOTEXEC_LISTEN_HTTP=127.0.0.1:$PORT HOTEXEC_LISTEN_ADMIN=127.0.0.1:$APORT \
  HOTEXEC_DRAIN_TIMEOUT=5s HOTEXEC_PROBATION=200ms RUST_LOG=info "$BIN" > "$OUT/log" 2>&1 &
for _ in $(seq 50); do [ -s "$OUT/pid" ] && break; sleep 0.1; done
WRK=
if [ "$MODE" = load ]; then
  wrk -t2 -c64 -d$((N + 8))s -H 'Connection: close' "http://127.0.0.1:$PORT/" > "$OUT/wrk.txt" 2>&1 &
  WRK=$!
fi
sleep 2
perf sched record -a -o "$OUT/sched.data" -- sleep $((N + 2)) > /dev/null 2>&1 &
PERF=$!
sleep 0.5
python3 "$HERE/send_signals.py" "$OUT/pid" "$N" "$OUT/signals"
wait $PERF || true
[ -n "$WRK" ] && { wait "$WRK" || true; }
kill -TERM "$(cat "$OUT/pid")" 2>/dev/null || true
sleep 1
perf sched timehist -i "$OUT/sched.data" > "$OUT/timehist.txt" 2>/dev/null || true
echo "done: python3 $HERE/analyze.py $OUT"
