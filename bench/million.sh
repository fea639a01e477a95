#!/usr/bin/env bash
# million.sh: peak memory of a first backup of a million small files (a big
# mail spool), custos against restic 0.18.1 on the same data in one run.
# Issue 9 asks for this figure; the step is too long for every compare.sh
# round, so it is measured on its own.
#
#   bench/million.sh                      # 1,000,000 files of 1-3 KiB
#   FILES=200000 bench/million.sh         # smaller, for a quick look
#
# BENCH_DIR (default $HOME/custos-bench-million) holds the data (about 4 GB
# on disk for a million files; kept for the next run with the same FILES)
# and the repositories (made anew each run). Each backup starts on a cold
# page cache. Wall seconds and peak RSS come from GNU time.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/custos-bench-million}
SHARED_DIR=${SHARED_DIR:-$src/../shared}
FILES=${FILES:-1000000}
case "$(realpath -m "$BENCH_DIR")/" in
"$src"/*) echo "BENCH_DIR must be outside the source tree ($src)" >&2; exit 1 ;;
esac
# shellcheck source=peers.sh
. "$src/bench/peers.sh"
install_peers

if [ "$(cat "$BENCH_DIR/data.files" 2>/dev/null)" != "$FILES" ]; then
	rm -rf "$BENCH_DIR"
fi
rm -rf "$BENCH_DIR/custos-repo" "$BENCH_DIR/restic-repo" "$BENCH_DIR/cache"
mkdir -p "$BENCH_DIR/bin"
(cd "$src" && go build -o "$BENCH_DIR/bin/custos" ./cmd/custos)
(cd "$SHARED_DIR/bench/gendata" && go build -o "$BENCH_DIR/bin/gendata" .)
commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ ! -e "$BENCH_DIR/data.files" ]; then
	echo "generating $FILES files"
	"$BENCH_DIR/bin/gendata" -out "$BENCH_DIR/data" -small "$FILES" -small-max-kib 3 -no-large >/dev/null
	echo "$FILES" >"$BENCH_DIR/data.files"
fi
printf 'bench-password-%s\n' "$RANDOM$RANDOM" >"$BENCH_DIR/password"
export CUSTOS_PASSWORD_FILE=$BENCH_DIR/password RESTIC_PASSWORD_FILE=$BENCH_DIR/password
export XDG_CACHE_HOME=$BENCH_DIR/cache
unset CUSTOS_PASSWORD RESTIC_PASSWORD CUSTOS_REPOSITORY RESTIC_REPOSITORY

drop_caches() {
	sync
	if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; else echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null; fi
}
measure() { # name command...
	local name=$1
	shift
	drop_caches
	/usr/bin/time -f "%e %M" -o "$BENCH_DIR/$name.time" "$@" >"$BENCH_DIR/$name.log" 2>&1 ||
		{ echo "$name failed:"; tail -5 "$BENCH_DIR/$name.log"; exit 1; }
}
"$BENCH_DIR/bin/custos" repo init -r "$BENCH_DIR/custos-repo" >/dev/null
"$RESTIC_NEW" init -r "$BENCH_DIR/restic-repo" >/dev/null
measure custos "$BENCH_DIR/bin/custos" repo backup -q -r "$BENCH_DIR/custos-repo" --dataset mail/spool "$BENCH_DIR/data"
measure restic "$RESTIC_NEW" backup -q -r "$BENCH_DIR/restic-repo" "$BENCH_DIR/data"

read -r c_s c_kib <"$BENCH_DIR/custos.time"
read -r r_s r_kib <"$BENCH_DIR/restic.time"
echo
echo "First backup of $FILES small files, cold cache (custos at $commit):"
echo
echo "| tool | seconds | peak RSS (MiB) |"
echo "|---|---|---|"
printf '| custos | %s | %d |\n' "$c_s" $((c_kib / 1024))
printf '| restic %s | %s | %d |\n' "$RESTIC_NEW_VERSION" "$r_s" $((r_kib / 1024))
awk -v c="$c_kib" -v r="$r_kib" 'BEGIN { printf "\ncustos / restic peak RSS: %.2f\n", c / r }'
