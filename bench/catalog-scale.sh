#!/usr/bin/env bash
# Catalog scale figures (issue 10): a catalog of DATASETS x ATOMS atoms
# (default 100 x 1000 = 100,000) on the embedded etcd, then
#   find '*' and find 'src/ds000/atom000500' through the agent's API,
#   custos find '*' from the CLI, with the agent running (the CLI reaches
#   its catalog) and without it (the CLI reads the catalog's database file,
#   since its server stopped cleanly; and, as after a crash, with the clean
#   file removed first, so that the CLI starts the catalog's server),
#   the agent's resident memory, and the etcd database size.
# Prints one line per figure: the median of RUNS runs, and the best.
# Everything goes under $BENCH_DIR (default a fresh temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS=${DATASETS:-100}
ATOMS=${ATOMS:-1000}
RUNS=${RUNS:-7}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d)}
PORT=${PORT:-17373}
mkdir -p "$BENCH_DIR"
work="$BENCH_DIR/work"
rm -rf "$work" "$BENCH_DIR/conf"
mkdir -p "$work" "$BENCH_DIR/conf"

go build -o "$BENCH_DIR/custos" ./cmd/custos
go build -o "$BENCH_DIR/catalogfill" ./bench/catalogfill
cat >"$BENCH_DIR/conf/agent.yml" <<YML
work_dir: $work
repositories:
  - name: local
    url: $work/repository
    unencrypted: true
metadb: embedded
http_listen: 127.0.0.1:$PORT
YML

echo "filling the catalog: $DATASETS datasets x $ATOMS atoms"
"$BENCH_DIR/catalogfill" -dir "$work/etcd" -datasets "$DATASETS" -atoms "$ATOMS"

# stats NAME UNIT VALUES...: median and best.
stats() {
	local name=$1 unit=$2; shift 2
	local sorted; sorted=$(printf '%s\n' "$@" | sort -g)
	local best median
	best=$(head -n1 <<<"$sorted")
	median=$(sed -n "$(( ($# + 1) / 2 ))p" <<<"$sorted")
	printf '%-52s median %8.1f %s   best %8.1f %s\n' "$name" "$median" "$unit" "$best" "$unit"
}
ms_of() { # command...: wall milliseconds
	local t0 t1
	t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N)
	echo $(( (t1 - t0) / 1000000 ))
}
curl_ms() { curl -sf -o /dev/null -w '%{time_total}' "$1" | awk '{printf "%.1f\n", $1 * 1000}'; }

cli=()
for _ in $(seq "$RUNS"); do cli+=("$(ms_of "$BENCH_DIR/custos" find -c "$BENCH_DIR/conf/agent.yml" '*')"); done
n=$("$BENCH_DIR/custos" find -c "$BENCH_DIR/conf/agent.yml" '*' | wc -l)
stats "CLI find '*', no agent (reads the files; $n lines)" ms "${cli[@]}"
cli=()
for _ in $(seq "$RUNS"); do
	rm -f "$work/etcd/clean"
	cli+=("$(ms_of "$BENCH_DIR/custos" find -c "$BENCH_DIR/conf/agent.yml" '*')")
done
stats "CLI find '*', no agent, after a crash (starts etcd)" ms "${cli[@]}"

"$BENCH_DIR/custos" agent -c "$BENCH_DIR/conf/agent.yml" >"$BENCH_DIR/agent.log" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/status" && break
	sleep 0.2
done
base="http://127.0.0.1:$PORT/api/backups"
n=$(curl -sf "$base?pattern=*" | grep -o '"atom":' | wc -l)
all=(); one=()
for _ in $(seq "$RUNS"); do
	all+=("$(curl_ms "$base?pattern=*")")
	one+=("$(curl_ms "$base?pattern=src/ds000/atom000500")")
done
stats "API find '*' ($n atoms)" ms "${all[@]}"
stats "API find 'src/ds000/atom000500'" ms "${one[@]}"
cli=()
for _ in $(seq "$RUNS"); do cli+=("$(ms_of "$BENCH_DIR/custos" find -c "$BENCH_DIR/conf/agent.yml" '*')"); done
stats "CLI find '*', agent running (reaches its catalog)" ms "${cli[@]}"
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
printf '%-52s %8.1f MiB (peak %.1f MiB)\n' "agent resident memory after the finds" "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)"
db=$(find "$work/etcd" -name db -path '*snap*' -printf '%s\n' | head -n1)
printf '%-52s %8.1f MiB\n' "etcd database file (member/snap/db)" "$(echo "$db / 1048576" | bc -l)"
