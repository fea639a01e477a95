#!/usr/bin/env bash
# compare.sh measures custos and restic side by side, in one run, on the same
# freshly generated dataset, and prints one table with the custos/restic
# ratio of every step against its target.
#
#   bench/compare.sh                 # everything under $HOME/custos-bench
#   BENCH_DIR=/tmp/b bench/compare.sh
#
# Environment:
#   BENCH_DIR   where all bench files go (default $HOME/custos-bench); never
#               inside the source tree
#   DATA        dataset folder (default $BENCH_DIR/data); it is regenerated
#               at the start of every run, so it must be gendata's output
#   SHARED_DIR  folder holding bench/gendata (default: ../shared next to the
#               checkout)
#   KEEP=1      keep the repositories and restores afterwards
#
#   BENCH_ROUNDS  how many rounds (default 3); every figure is the median
#               over the rounds
#
# Each round: gendata (fresh), then for both tools: init; first backup;
# second backup with nothing changed; gendata -mutate, then a backup of the
# mutated state; check reading all data; full restore, verified byte-exact
# with diff -r. The tools take turns going first (custos in odd rounds).
# Each measured command starts on a warm page cache: the data (for backups)
# or that tool's repository (for check and restore) is read right before
# it. That matters here: these machines page out file pages that stay idle
# for a few seconds, so a tool measured second would otherwise read cold
# data. Before that, sync, so that no tool pays for writing back what the
# previous one left dirty. Wall seconds and peak RSS come from GNU time.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/custos-bench}
DATA=${DATA:-$BENCH_DIR/data}
SHARED_DIR=${SHARED_DIR:-$src/../shared}
gendata_src=$SHARED_DIR/bench/gendata

case "$(realpath -m "$BENCH_DIR")/" in
"$src"/*) echo "BENCH_DIR must be outside the source tree ($src)" >&2; exit 1 ;;
esac
if [ ! -d "$gendata_src" ]; then
	echo "gendata not found at $gendata_src (set SHARED_DIR)" >&2
	exit 1
fi

sudo_if_needed() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
	echo "installing Debian package $1"
	sudo_if_needed apt-get install -y "$1" >/dev/null ||
		{ sudo_if_needed apt-get update >/dev/null && sudo_if_needed apt-get install -y "$1" >/dev/null; }
}
command -v restic >/dev/null || apt_install restic
[ -x /usr/bin/time ] || apt_install time

mkdir -p "$BENCH_DIR/bin"
bin=$BENCH_DIR/bin
echo "building custos and gendata"
(cd "$src" && go build -o "$bin/custos" ./cmd/custos)
(cd "$gendata_src" && go build -o "$bin/gendata" .)

# The data folder is deleted and regenerated every run, so refuse anything
# that does not look like gendata's output.
if [ -e "$DATA" ]; then
	for e in "$DATA"/* "$DATA"/.[!.]*; do
		[ -e "$e" ] || continue
		case "${e##*/}" in small | medium | large | text) ;; *)
			echo "$DATA holds $e, which gendata does not write; refusing to delete it" >&2
			exit 1
			;;
		esac
	done
	rm -rf "$DATA"
fi

run=$BENCH_DIR/run
rm -rf "$run"
mkdir -p "$run/logs"
printf 'bench-password-%s\n' "$RANDOM$RANDOM" >"$run/password"
export CUSTOS_PASSWORD_FILE=$run/password RESTIC_PASSWORD_FILE=$run/password
export XDG_CACHE_HOME=$run/cache # restic's default cache, fresh per round
crepo=$run/custos-repo
rrepo=$run/restic-repo
unset CUSTOS_PASSWORD RESTIC_PASSWORD CUSTOS_REPOSITORY RESTIC_REPOSITORY
rounds=${BENCH_ROUNDS:-3}

warm() { find "$1" -type f -exec cat {} + >/dev/null; }
bytes_of() { du -sb "$1" | cut -f1; }

# measure NAME CMD...: runs CMD under GNU time; appends "wall_seconds
# peak_kib" to logs/NAME.time.
measure() {
	local name=$1
	shift
	if ! /usr/bin/time -f '%e %M' -a -o "$run/logs/$name.time" "$@" >"$run/logs/$name.log" 2>&1; then
		echo "step $name failed: $*" >&2
		tail -n 20 "$run/logs/$name.log" >&2
		exit 1
	fi
	printf '  %-22s %6ss  %6s MiB\n' "$name" "$(tail -n1 "$run/logs/$name.time" | cut -d' ' -f1)" \
		"$(($(tail -n1 "$run/logs/$name.time" | cut -d' ' -f2) / 1024))"
}

C=("$bin/custos" repo --repo "$crepo" --quiet)
R=(restic --repo "$rrepo" --quiet)

# both STEP WARM_C WARM_R CUSTOS_ARGS... -- RESTIC_ARGS...: one step for both
# tools, in this round's order, each after warming its own input ("-" for
# none).
both() {
	local step=$1 wc=$2 wr=$3
	shift 3
	local cargs=() rargs=()
	while [ "$1" != -- ]; do cargs+=("$1"); shift; done
	shift
	rargs=("$@")
	# sync first: the previous step's dirty pages must not be written back
	# on the next tool's time.
	c() { sync; [ "$wc" = - ] || warm "$wc"; measure "custos-$step" "${C[@]}" "${cargs[@]}"; }
	r() { sync; [ "$wr" = - ] || warm "$wr"; measure "restic-$step" "${R[@]}" "${rargs[@]}"; }
	if [ $((round % 2)) = 1 ]; then c; r; else r; c; fi
}

for round in $(seq "$rounds"); do
	echo "== round $round of $rounds: generating the dataset in $DATA"
	rm -rf "$DATA" "$crepo" "$rrepo" "$run/cache" "$run/restore-custos" "$run/restore-restic"
	"$bin/gendata" -out "$DATA" >/dev/null
	databytes=$(bytes_of "$DATA")
	both init - - init -- init
	echo "== first backup ($((databytes / 1048576)) MiB)"
	both backup1 "$DATA" "$DATA" backup --dataset bench --host bench "$DATA" -- backup --host bench "$DATA"
	echo "$(bytes_of "$crepo") $(bytes_of "$rrepo")" >>"$run/logs/size1"
	echo "== second backup, nothing changed"
	both backup2 "$DATA" "$DATA" backup --dataset bench --host bench "$DATA" -- backup --host bench "$DATA"
	echo "== backup after gendata -mutate"
	"$bin/gendata" -out "$DATA" -mutate >/dev/null
	databytes=$(bytes_of "$DATA")
	both backup3 "$DATA" "$DATA" backup --dataset bench --host bench "$DATA" -- backup --host bench "$DATA"
	echo "$(bytes_of "$crepo") $(bytes_of "$rrepo")" >>"$run/logs/size3"
	echo "== check, reading all data"
	both check "$crepo" "$rrepo" check --read-data -- check --read-data
	echo "== full restore of the latest snapshot"
	both restore "$crepo" "$rrepo" restore --snapshot latest --target "$run/restore-custos" -- restore latest --target "$run/restore-restic"
	diff -r "$DATA" "$run/restore-custos" >/dev/null || { echo "custos restore differs from the source" >&2; exit 1; }
	diff -r "$DATA" "$run/restore-restic$DATA" >/dev/null || { echo "restic restore differs from the source" >&2; exit 1; }
	echo "  both restores are byte-exact (diff -r)"
done

# median FILE COLUMN: the median of one column over the rounds.
median() { cut -d' ' -f"$2" "$1" | sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
wall() { median "$run/logs/$1.time" 1; }
rss() { median "$run/logs/$1.time" 2; }

echo
echo "custos (working tree at $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)) vs $(restic version | cut -d' ' -f1-2); dataset $((databytes / 1048576)) MiB; $(nproc) cores; median of $rounds rounds"
awk -v mb="$databytes" -v cs1="$(median "$run/logs/size1" 1)" -v rs1="$(median "$run/logs/size1" 2)" \
	-v cs3="$(median "$run/logs/size3" 1)" -v rs3="$(median "$run/logs/size3" 2)" \
	-v ci="$(wall custos-init)" -v ri="$(wall restic-init)" \
	-v cb1="$(wall custos-backup1)" -v rb1="$(wall restic-backup1)" \
	-v cb2="$(wall custos-backup2)" -v rb2="$(wall restic-backup2)" \
	-v cb3="$(wall custos-backup3)" -v rb3="$(wall restic-backup3)" \
	-v cc="$(wall custos-check)" -v rc="$(wall restic-check)" \
	-v cr="$(wall custos-restore)" -v rr="$(wall restic-restore)" \
	-v cm1="$(rss custos-backup1)" -v rm1="$(rss restic-backup1)" \
	-v cm2="$(rss custos-backup2)" -v rm2="$(rss restic-backup2)" \
	-v cm3="$(rss custos-backup3)" -v rm3="$(rss restic-backup3)" \
	-v cmc="$(rss custos-check)" -v rmc="$(rss restic-check)" \
	-v cmr="$(rss custos-restore)" -v rmr="$(rss restic-restore)" '
function rate(bytes, s) { return s > 0 ? sprintf("%.0f", bytes / s / 1e6) : "-" }
function verdict(r, t) { return t == "" ? "" : (r <= t ? "PASS" : "MISS") }
function row(step, c, r, cbytes, rbytes, cm, rm, target,   ratio) {
	ratio = r > 0 ? c / r : 0
	printf "| %-30s | %8.2f | %8.2f | %5.2f | %6s | %6s | %6d | %6d | %6s | %-4s |\n", step, c, r, ratio,
		rate(cbytes, c), rate(rbytes, r), cm / 1024, rm / 1024, target == "" ? "" : "<=" target, verdict(ratio, target)
}
BEGIN {
	printf "| %-30s | %8s | %8s | %5s | %6s | %6s | %6s | %6s | %6s | %-4s |\n", "step (wall s)", "custos", "restic", "ratio", "c MB/s", "r MB/s", "c RSS", "r RSS", "target", ""
	printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "--------------------------------", "----------", "----------", "-------", "--------", "--------", "--------", "--------", "--------", "------"
	row("init", ci, ri, 0, 0, 0, 0, "")
	row("first backup", cb1, rb1, mb, mb, cm1, rm1, "0.5")
	row("second backup, no change", cb2, rb2, mb, mb, cm2, rm2, "0.5")
	row("backup after -mutate", cb3, rb3, mb, mb, cm3, rm3, "")
	row("check --read-data", cc, rc, cs3, rs3, cmc, rmc, "0.67")
	row("full restore", cr, rr, mb, mb, cmr, rmr, "0.67")
	printf "\n| %-30s | %10s | %10s | %5s | %6s | %-4s |\n", "other", "custos", "restic", "ratio", "target", ""
	printf "|%s|%s|%s|%s|%s|%s|\n", "--------------------------------", "------------", "------------", "-------", "--------", "------"
	printf "| %-30s | %6d MiB | %6d MiB | %5.2f | %6s | %-4s |\n", "repo size after first backup", cs1 / 1048576, rs1 / 1048576, cs1 / rs1, "<=1.0", verdict(cs1 / rs1, "1.0")
	printf "| %-30s | %6d MiB | %6d MiB | %5.2f | %6s | %-4s |\n", "repo size after mutate backup", cs3 / 1048576, rs3 / 1048576, cs3 / rs3, "", ""
	printf "| %-30s | %6d MiB | %6d MiB | %5.2f | %6s | %-4s |\n", "peak RSS, first backup", cm1 / 1024, rm1 / 1024, cm1 / rm1, "<=1.0", verdict(cm1 / rm1, "1.0")
}'
echo "(RSS in MiB; MB/s = dataset bytes / wall, for check = repository bytes / wall; logs in $run/logs)"

if [ "${KEEP:-}" != 1 ]; then
	rm -rf "$crepo" "$rrepo" "$run/restore-custos" "$run/restore-restic" "$run/cache"
fi
