#!/usr/bin/env bash
# compare.sh measures custos against restic 0.14 (Debian's), restic 0.18.1
# and kopia 0.21.1 side by side, in one run, on the same freshly generated
# data, and prints one table per mode with the median of every step per tool
# and the custos / best peer ratio.
#
#   bench/compare.sh                          # MODE=local,cold, 3 rounds
#   MODE=s3 BENCH_ROUNDS=1 bench/compare.sh   # a quick look at one mode
#   MODE=all bench/compare.sh                 # local, cold, s3 and small
#
# Modes (MODE is a comma- or space-separated list, or "all"):
#   local  the bench dataset, local repositories, warm page cache (the input
#          of every command is read right before it)
#   cold   the same, cold page cache: sync; echo 3 > drop_caches before every
#          measured command, as a nightly job meets its data
#   s3     the bench dataset into S3 (versitygw on loopback, the project's own
#          internal/s3server) through a proxy (internal/faultproxy) that adds
#          S3_DELAY_MS (default 30) to every request, and through one that adds
#          nothing; cold page cache: first and no-change backup, check and
#          restore (each tool with its own local cache, as it keeps one by
#          default, custos too). Also `repo copy` of the whole dataset
#          from a local repository to S3 against `restic copy`.
#   small  SMALL_FILES (default 300,000) files of 1-3 KiB, ~1.2 GB on disk
#          (a mail spool's shape), local repositories, cold page cache
#
# Environment:
#   BENCH_DIR     where all bench files go (default $HOME/custos-bench); never
#                 inside the source tree
#   BENCH_ROUNDS  rounds per mode (default 3); every figure is the median
#   TOOLS         override the tools of every mode (custos restic14 restic18
#                 kopia; custos must be one of them)
#   SHARED_DIR    folder holding bench/gendata (default ../shared next to the
#                 checkout)
#   PEER_CACHE    where the built peers are cached (default
#                 ~/.cache/custos/bench); see bench/peers.sh
#   KEEP=1        keep the last round's repositories and data
#   REPORT=1      measure nothing; print the tables of MODE again from the
#                 logs of the last run in $BENCH_DIR
#
# Each round: fresh data, then every step for every tool; the tools take
# turns going first (round r starts with tool r). Every restore is verified
# byte-exact with diff -r. Wall seconds and peak RSS come from GNU time.
# "first backup + sync" (local modes) adds the time of a sync right after
# the backup: custos and restic sync every pack before they exit, kopia
# leaves its writes to the page cache, which this machine's 24 GiB holds.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/custos-bench}
SHARED_DIR=${SHARED_DIR:-$src/../shared}
gendata_src=$SHARED_DIR/bench/gendata
rounds=${BENCH_ROUNDS:-3}
MODE=${MODE:-local,cold}
[ "$MODE" = all ] && MODE="local cold s3 small"
MODES=${MODE//,/ }
SMALL_FILES=${SMALL_FILES:-300000}
S3_DELAY_MS=${S3_DELAY_MS:-30}

for m in $MODES; do
	case $m in local | cold | s3 | small) ;; *)
		echo "unknown mode $m (local, cold, s3, small, all)" >&2
		exit 1
		;;
	esac
done
case "$(realpath -m "$BENCH_DIR")/" in
"$src"/*) echo "BENCH_DIR must be outside the source tree ($src)" >&2; exit 1 ;;
esac
if [ ! -d "$gendata_src" ]; then
	echo "gendata not found at $gendata_src (set SHARED_DIR)" >&2
	exit 1
fi

run=$BENCH_DIR/run
DATA=$BENCH_DIR/data
# shellcheck source=peers.sh
. "$src/bench/peers.sh"
if [ "${REPORT:-}" = 1 ]; then
	# Only print the tables again, from the logs of the last run.
	[ -f "$run/logs/commit" ] || { echo "no finished run in $run" >&2; exit 1; }
	commit=$(cat "$run/logs/commit")
else
	install_peers

	bin=$BENCH_DIR/bin
	mkdir -p "$bin"
	echo "building custos, gendata and s3env"
	(cd "$src" && go build -o "$bin/custos" ./cmd/custos && go build -o "$bin/s3env" ./bench/s3env)
	(cd "$gendata_src" && go build -o "$bin/gendata" .)
	commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)
	git -C "$src" diff --quiet HEAD 2>/dev/null || commit="$commit+changes"

	# The data folder is deleted and regenerated every round, so refuse anything
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
	fi
	rm -rf "$run" "$DATA"
	mkdir -p "$run/logs"
	echo "$commit" >"$run/logs/commit"
fi
printf 'bench-password-%s\n' "$RANDOM$RANDOM" >"$run/password"
export CUSTOS_PASSWORD_FILE=$run/password RESTIC_PASSWORD_FILE=$run/password
KOPIA_PASSWORD=$(cat "$run/password")
export KOPIA_PASSWORD KOPIA_CHECK_FOR_UPDATES=false
export XDG_CACHE_HOME=$run/cache # restic's and custos's caches, fresh every round
unset CUSTOS_PASSWORD RESTIC_PASSWORD CUSTOS_REPOSITORY RESTIC_REPOSITORY

tool_name() {
	case $1 in
	custos) echo "custos" ;;
	restic14) echo "restic $("$RESTIC_OLD" version | cut -d' ' -f2)" ;;
	restic18) echo "restic $RESTIC_NEW_VERSION" ;;
	kopia) echo "kopia $KOPIA_VERSION" ;;
	esac
}
restic_bin() { if [ "$1" = restic14 ]; then echo "$RESTIC_OLD"; else echo "$RESTIC_NEW"; fi; }

drop_caches() {
	sync
	if [ -w /proc/sys/vm/drop_caches ]; then
		echo 3 >/proc/sys/vm/drop_caches
	else
		echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null
	fi
}
warm() { find "$1" -type f -exec cat {} + >/dev/null; }
bytes_of() { du -sb "$1" | cut -f1; }

# prepare INPUT: the page cache state every measured command starts from.
# Warm: sync first (no tool pays for writing back what the previous one left
# dirty), then read the command's input, because these machines page out
# file pages idle for a few seconds, so a tool measured second would
# otherwise read cold data. Cold: sync and drop every cached page.
prepare() {
	if [ "$cache" = cold ]; then
		drop_caches
	else
		sync
		[ ! -d "$1" ] || warm "$1"
	fi
}

failed=0
# measure NAME CMD...: runs CMD under GNU time; appends "wall_seconds
# peak_kib" to logs/NAME.time, or "fail fail" if it fails.
measure() {
	local name=$1
	shift
	if ! /usr/bin/time -f '%e %M' -a -o "$run/logs/$name.time" "$@" >"$run/logs/$name.log" 2>&1; then
		echo "  $name FAILED: $*" >&2
		tail -n 20 "$run/logs/$name.log" >&2
		# GNU time has written its line with the exit status; replace it.
		sed -i '$d' "$run/logs/$name.time"
		echo "fail fail" >>"$run/logs/$name.time"
		failed=1
		return 1
	fi
	printf '  %-34s %7ss  %6s MiB\n' "$name" "$(tail -n1 "$run/logs/$name.time" | cut -d' ' -f1)" \
		"$(($(tail -n1 "$run/logs/$name.time" | cut -d' ' -f2) / 1024))"
}
record() { echo "$2" >>"$run/logs/$1.value"; }

# Repository locations per tool, set by set_repo for the current mode.
# Local: a folder. S3: a bucket per tool and round under the chosen proxy.
repo_of() {
	if [ "$backend" = s3 ]; then
		echo "s3:$s3url/$(bucket_of "$1")/repo"
	else
		echo "$run/repo-$1"
	fi
}
bucket_of() { echo "bench-$1-$tag-r$round"; }
kopia_cfg() { echo "$run/kopia-$tag.config"; }
# kopia_argv: sets the array kopia to the kopia command line of this mode.
kopia_argv() { kopia=("$KOPIA" --config-file "$(kopia_cfg)" --log-dir "$run/kopia-logs"); }

# init_tool TOOL: creates the tool's repository (measured as "init").
init_tool() {
	local t=$1 repo kopia
	repo=$(repo_of "$t")
	kopia_argv
	case $t in
	custos) measure "$tag-$t-init" "$bin/custos" repo --repo "$repo" --quiet init ;;
	restic*) measure "$tag-$t-init" "$(restic_bin "$t")" --repo "$repo" --quiet init ;;
	kopia)
		rm -f "$(kopia_cfg)"
		if [ "$backend" = s3 ]; then
			local hp=${s3url#http://}
			measure "$tag-$t-init" "${kopia[@]}" repository create s3 --bucket "$(bucket_of "$t")" --prefix repo/ \
				--endpoint "$hp" --disable-tls --access-key "$AWS_ACCESS_KEY_ID" \
				--secret-access-key "$AWS_SECRET_ACCESS_KEY" --region "$AWS_REGION" \
				--cache-directory "$run/cache/kopia-$tag"
		else
			measure "$tag-$t-init" "${kopia[@]}" repository create filesystem --path "$repo" \
				--cache-directory "$run/cache/kopia-$tag"
		fi
		# kopia stores data uncompressed unless a policy says otherwise.
		"${kopia[@]}" policy set --global --compression=zstd >>"$run/logs/$tag-$t-init.log" 2>&1
		;;
	esac
}

# step STEP TOOL: one measured step of one tool, after preparing the cache.
step() {
	local s=$1 t=$2 repo name kopia
	repo=$(repo_of "$t")
	kopia_argv
	name=$tag-$t-$s
	case $s in
	init) init_tool "$t" || true ;;
	backup*)
		prepare "$DATA"
		case $t in
		custos) measure "$name" "$bin/custos" repo --repo "$repo" --quiet backup --dataset bench --host bench "$DATA" ;;
		restic*) measure "$name" "$(restic_bin "$t")" --repo "$repo" --quiet backup --host bench "$DATA" ;;
		kopia) measure "$name" "${kopia[@]}" snapshot create --no-progress "$DATA" ;;
		esac || return 0
		if [ "$s" = backup1 ] && [ "$backend" = local ]; then
			# Until the backup is on disk: custos and restic sync every
			# pack before they exit, kopia leaves its packs to the page
			# cache. The sync right after the exit is added to the wall
			# time (GNU time's peak RSS is kept).
			local t0 t1
			t0=$(date +%s.%N)
			sync
			t1=$(date +%s.%N)
			tail -n1 "$run/logs/$name.time" | awk -v a="$t0" -v z="$t1" '{printf "%.2f %s\n", $1 + z - a, $2}' \
				>>"$run/logs/$name-sync.time"
		fi
		if [ "$s" = backup1 ]; then
			if [ "$backend" = s3 ]; then
				record "$tag-$t-size" "$(bytes_of "$S3_DIR/$(bucket_of "$t")")"
			else
				record "$tag-$t-size" "$(bytes_of "$repo")"
			fi
		fi
		;;
	check)
		prepare "$repo"
		case $t in
		custos) measure "$name" "$bin/custos" repo --repo "$repo" --quiet check --read-data ;;
		restic*) measure "$name" "$(restic_bin "$t")" --repo "$repo" --quiet check --read-data ;;
		# kopia has no check of the repository's packs by itself; reading
		# every file of every snapshot back is the closest equivalent.
		kopia) measure "$name" "${kopia[@]}" snapshot verify --verify-files-percent=100 ;;
		esac || true
		;;
	restore)
		# Every tool's restore stays until all tools have restored
		# (restored_all deletes them): deleting one right before the next
		# tool's restore made that one slower (ext4 skips inodes freed in
		# the last minute when it creates files), so whichever tool
		# restored second paid for the first.
		local target=$run/restore-$name
		rm -rf "$target"
		prepare "$repo"
		case $t in
		custos) measure "$name" "$bin/custos" repo --repo "$repo" --quiet restore --snapshot latest --target "$target" ;;
		restic*) measure "$name" "$(restic_bin "$t")" --repo "$repo" --quiet restore latest --target "$target" ;;
		kopia) measure "$name" "${kopia[@]}" snapshot restore "$DATA" "$target" ;; # the latest snapshot of that path
		esac || return 0
		local got=$target
		[ "${t#restic}" = "$t" ] || got=$target$DATA
		if ! diff -r "$DATA" "$got" >"$run/logs/$name.diff" 2>&1; then
			echo "  $name: the restore DIFFERS from the source (logs/$name.diff)" >&2
			sed -i '$d' "$run/logs/$name.time"
			echo "differs differs" >>"$run/logs/$name.time"
			failed=1
		fi
		;;
	copy)
		# The whole dataset from a local repository (made, unmeasured, at
		# the start of the round) into a fresh S3 repository.
		local from=$run/local-$t
		repo="s3:$s3url/$(bucket_of "copy-$t")/repo"
		case $t in
		custos)
			"$bin/custos" repo --repo "$repo" --quiet init >>"$run/logs/$name.log" 2>&1
			prepare "$from"
			measure "$name" "$bin/custos" repo --repo "$from" --quiet copy --to "$repo" --to-password-file "$run/password" || true
			;;
		restic*)
			# Same chunker parameters, as restic's docs ask for a copy target.
			"$(restic_bin "$t")" --repo "$repo" --quiet init --from-repo "$from" \
				--from-password-file "$run/password" --copy-chunker-params >>"$run/logs/$name.log" 2>&1
			prepare "$from"
			measure "$name" "$(restic_bin "$t")" --repo "$repo" --quiet copy --from-repo "$from" \
				--from-password-file "$run/password" || true
			;;
		esac
		;;
	esac
}

# all_tools STEP TOOL...: STEP for every tool, in this round's order.
# restored_all deletes the restores of a step once every tool has made
# its own, so that a round keeps at most one restore per tool on disk.
restored_all() { rm -rf "$run"/restore-*; }

all_tools() {
	local s=$1 i n
	shift
	local ts=("$@")
	n=${#ts[@]}
	for ((i = 0; i < n; i++)); do
		step "$s" "${ts[$(((i + round - 1) % n))]}"
	done
}

gen() {
	rm -rf "$DATA"
	if [ "$1" = small ]; then
		"$bin/gendata" -out "$DATA" -small "$SMALL_FILES" -small-max-kib 3 -no-large >/dev/null
	else
		"$bin/gendata" -out "$DATA" >/dev/null
	fi
	data_bytes=$(bytes_of "$DATA")
	data_files=$(find "$DATA" -type f | wc -l)
	data_disk=$(du -sm "$DATA" | cut -f1) # MiB in blocks, which small files round up
	echo "$data_bytes $data_files $data_disk" >"$run/logs/$1.data"
}

clean_round() {
	rm -rf "$run"/repo-* "$run"/local-* "$run"/restore-* "$run"/kopia-*.config "$run/cache"
	# Empty every bucket but keep it: each round has its own buckets, so
	# this round's are empty already.
	if [ -n "${S3_DIR:-}" ]; then rm -rf "$S3_DIR"/bench-*/*; fi
}

s3env_pid=
stop_s3env() {
	if [ -n "$s3env_pid" ]; then
		kill "$s3env_pid" 2>/dev/null || true
		wait "$s3env_pid" 2>/dev/null || true
		s3env_pid=
	fi
}
trap stop_s3env EXIT

# start_s3env ROUNDS: versitygw and the two proxies, with a bucket per tool,
# proxy and round (buckets are deleted between rounds through the server's
# posix folder, so only empty names are kept).
start_s3env() {
	local b="" r t d
	for r in $(seq "$1"); do
		for d in s3-${S3_DELAY_MS}ms s3-0ms; do
			for t in custos restic18 kopia restic14 copy-custos copy-restic18 copy-restic14; do
				b="$b,bench-$t-$d-r$r"
			done
		done
	done
	rm -f "$run/s3.env"
	"$bin/s3env" -dir "$run/s3" -env "$run/s3.env" -delay "${S3_DELAY_MS}ms" -buckets "${b#,}" >"$run/logs/s3env.log" 2>&1 &
	s3env_pid=$!
	while [ ! -f "$run/s3.env" ]; do
		kill -0 "$s3env_pid" 2>/dev/null || { cat "$run/logs/s3env.log" >&2; exit 1; }
		sleep 0.2
	done
	set -a
	# shellcheck disable=SC1091
	. "$run/s3.env"
	set +a
	export AWS_CONFIG_FILE=$run/no-aws-config AWS_SHARED_CREDENTIALS_FILE=$run/no-aws-config
}

median() {
	grep -v '^fail\|^differs' "$1" 2>/dev/null | cut -d' ' -f"$2" | sort -g |
		awk '{v[NR] = $1} END {if (NR == 0) print "-"; else print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# cell FILE COL: the median, or what went wrong if no round succeeded.
cell() {
	local f=$1 m
	[ -f "$f" ] || { echo -; return; }
	m=$(median "$f" "$2")
	if [ "$m" = - ]; then tail -n1 "$f" | cut -d' ' -f1; else echo "$m"; fi
}

# table TITLE REF TOOL...: prints the table of the mode in $tag from the
# logs. Rows: "label|kind|file suffix|target"; kind s = seconds, m = MiB
# (RSS from the .time file), z = MiB (size from the .value file). REF is the
# tool the target is measured against: "best" (the best peer) or a tool.
table() {
	local title=$1 ref=$2
	shift 2
	local ts=("$@") rows=() r t v
	case $tag in
	local | cold) rows=("first backup|s|backup1|0.5" "first backup + sync|s|backup1-sync|" "no-change backup|s|backup2|0.67" "mutated backup|s|backup3|0.67"
		"check, all data|s|check|0.67" "restore|s|restore|" "peak RSS, first backup (MiB)|m|backup1|"
		"peak RSS, restore (MiB)|m|restore|" "repository size (MiB)|z|size|") ;;
	s3-*) rows=("first backup|s|backup1|0.5" "no-change backup|s|backup2|" "check --read-data|s|check|0.67" "restore|s|restore|0.67"
		"copy local to S3|s|copy|0.5" "peak RSS, first backup (MiB)|m|backup1|" "peak RSS, restore (MiB)|m|restore|"
		"repository size (MiB)|z|size|") ;;
	small) rows=("first backup|s|backup1|" "no-change backup|s|backup2|" "restore|s|restore|"
		"peak RSS, first backup (MiB)|m|backup1|" "peak RSS, restore (MiB)|m|restore|" "repository size (MiB)|z|size|") ;;
	esac
	{
		printf 'title\t%s\n' "$title"
		printf 'ref\t%s\n' "$ref"
		printf 'head'
		for t in "${ts[@]}"; do printf '\t%s\t%s' "$t" "$(tool_name "$t")"; done
		printf '\n'
		for r in "${rows[@]}"; do
			IFS='|' read -r label kind suffix target <<<"$r"
			printf 'row\t%s\t%s\t%s' "$label" "$kind" "$target"
			for t in "${ts[@]}"; do
				case $kind in
				s) v=$(cell "$run/logs/$tag-$t-$suffix.time" 1) ;;
				m) v=$(cell "$run/logs/$tag-$t-$suffix.time" 2) ;;
				z) v=$([ -f "$run/logs/$tag-$t-$suffix.value" ] && median "$run/logs/$tag-$t-$suffix.value" 1 || echo -) ;;
				esac
				printf '\t%s' "$v"
			done
			printf '\n'
		done
	} | awk -F'\t' -v notargets="${NOTARGETS:-}" '
function num(v) { return v ~ /^[0-9.]+$/ }
function show(v, kind) {
	if (!num(v)) return v
	if (kind == "s") return sprintf("%.2f", v)
	if (kind == "m") return sprintf("%d", v / 1024)
	return sprintf("%d", v / 1048576)
}
$1 == "title" { print ""; print $2; next }
$1 == "ref" { ref = $2; next }
$1 == "head" {
	n = 0
	for (i = 2; i <= NF; i += 2) { n++; id[n] = $i; name[n] = $(i + 1) }
	line = "| step |"; sep = "|---|"
	for (i = 1; i <= n; i++) { line = line " " name[i] " |"; sep = sep "---:|" }
	line = line " custos / best peer |"; sep = sep "---:|"
	if (ref != "best") {
		for (i = 1; i <= n; i++) if (id[i] == ref) refname = name[i]
		line = line " custos / " refname " |"; sep = sep "---:|"
	}
	line = line " target |"; sep = sep "---|"
	print line; print sep
	next
}
$1 == "row" {
	label = $2; kind = $3; target = $4
	line = "| " label " |"
	c = ""; best = ""; refv = ""
	for (i = 1; i <= n; i++) {
		v = $(4 + i)
		line = line " " show(v, kind) " |"
		if (id[i] == "custos") c = v
		else if (num(v) && (best == "" || v + 0 < best + 0)) best = v
		if (id[i] == ref) refv = v
	}
	ratio = (num(c) && best != "" && best > 0) ? sprintf("%.2f", c / best) : "-"
	line = line " " ratio " |"
	if (ref != "best") {
		rr = (num(c) && num(refv) && refv > 0) ? c / refv : "-"
		line = line " " (rr == "-" ? rr : sprintf("%.2f", rr)) " |"
	} else rr = (ratio == "-") ? "-" : c / best
	verdict = ""
	# Against the unrounded ratio: 0.504 shows as 0.50 but misses <= 0.5.
	if (notargets == "" && target != "" && rr != "-") verdict = "<= " target (rr <= target + 0 ? " PASS" : " MISS")
	line = line " " verdict " |"
	print line
}'
}

for mode in $MODES; do
	case $mode in
	local) cache=warm backend=local tools=(custos restic14 restic18 kopia) ;;
	cold) cache=cold backend=local tools=(custos restic14 restic18 kopia) ;;
	s3) cache=cold backend=s3 tools=(custos restic18 kopia) ;;
	small) cache=cold backend=local tools=(custos restic18 kopia) ;;
	esac
	# shellcheck disable=SC2206
	[ -z "${TOOLS:-}" ] || tools=($TOOLS)
	measured_rounds=$rounds
	if [ "${REPORT:-}" = 1 ]; then
		measured_rounds=0
		t=$mode
		[ "$mode" != s3 ] || t=s3-${S3_DELAY_MS}ms
		rounds=$(wc -l <"$run/logs/$t-custos-backup1.time" 2>/dev/null || echo 0)
		[ "$rounds" != 0 ] || { echo "no $mode figures in $run/logs" >&2; continue; }
		data_bytes=0 data_files=0 data_disk=0
		[ ! -f "$run/logs/$mode.data" ] || read -r data_bytes data_files data_disk <"$run/logs/$mode.data"
	elif [ "$mode" = s3 ] && [ -z "$s3env_pid" ]; then
		start_s3env "$rounds"
	fi
	for round in $(seq "$measured_rounds"); do
		clean_round
		echo "== $mode, round $round of $rounds ($cache page cache): generating the data"
		gen "$mode"
		echo "   $((data_bytes / 1048576)) MiB in $data_files files"
		case $mode in
		local | cold | small)
			tag=$mode
			all_tools init "${tools[@]}"
			echo "-- first backup"
			all_tools backup1 "${tools[@]}"
			echo "-- second backup, nothing changed"
			all_tools backup2 "${tools[@]}"
			if [ "$mode" != small ]; then
				echo "-- backup after gendata -mutate"
				"$bin/gendata" -out "$DATA" -mutate >/dev/null
				all_tools backup3 "${tools[@]}"
				echo "-- check, reading all data"
				all_tools check "${tools[@]}"
			fi
			echo "-- full restore of the latest snapshot, verified with diff -r"
			all_tools restore "${tools[@]}"
			restored_all
			;;
		s3)
			# Local source repositories for the copy step, unmeasured.
			for t in "${tools[@]}"; do
				case $t in
				custos)
					"$bin/custos" repo --repo "$run/local-$t" --quiet init >/dev/null
					"$bin/custos" repo --repo "$run/local-$t" --quiet backup --dataset bench --host bench "$DATA" >/dev/null
					;;
				restic*)
					"$(restic_bin "$t")" --repo "$run/local-$t" --quiet init >/dev/null
					"$(restic_bin "$t")" --repo "$run/local-$t" --quiet backup --host bench "$DATA" >/dev/null
					;;
				esac
			done
			backend=s3
			for s3url in "$S3_SLOW" "$S3_FAST"; do
				if [ "$s3url" = "$S3_SLOW" ]; then tag=s3-${S3_DELAY_MS}ms; else tag=s3-0ms; fi
				echo "-- $tag: init"
				all_tools init "${tools[@]}"
				echo "-- $tag: first backup"
				all_tools backup1 "${tools[@]}"
				echo "-- $tag: second backup, nothing changed"
				all_tools backup2 "${tools[@]}"
				echo "-- $tag: check, reading all data"
				all_tools check "${tools[@]}"
				echo "-- $tag: full restore, verified with diff -r"
				all_tools restore "${tools[@]}"
				restored_all
				echo "-- $tag: copy of the whole dataset from a local repository"
				# kopia has no copy between repositories (sync-to copies the
				# raw blobs, which is another operation).
				copiers=()
				for t in "${tools[@]}"; do [ "$t" = kopia ] || copiers+=("$t"); done
				all_tools copy "${copiers[@]}"
			done
			;;
		esac
	done
	tag=$mode
	case $mode in
	local) table "Local repository, warm page cache, median of $rounds rounds, wall seconds" best "${tools[@]}" ;;
	cold) table "Local repository, cold page cache, median of $rounds rounds, wall seconds" best "${tools[@]}" ;;
	small)
		tag=small
		table "$data_files small files ($((data_bytes / 1048576)) MiB of content, $data_disk MiB on disk), local repository, cold page cache, median of $rounds rounds, wall seconds" best "${tools[@]}"
		;;
	s3)
		ref=best
		for t in "${tools[@]}"; do [ "$t" != restic18 ] || ref=restic18; done
		tag=s3-${S3_DELAY_MS}ms
		table "S3 (versitygw on loopback) with ${S3_DELAY_MS} ms added to every request, cold page cache, median of $rounds rounds, wall seconds" "$ref" "${tools[@]}"
		tag=s3-0ms
		# The targets are for 30 ms; with nothing added, "no slower than
		# before" is judged against earlier runs.
		NOTARGETS=1 table "S3 (versitygw on loopback), nothing added, cold page cache, median of $rounds rounds, wall seconds" "$ref" "${tools[@]}"
		stop_s3env
		;;
	esac
	# The load while measuring, kept for REPORT=1.
	[ "${REPORT:-}" = 1 ] || uptime | sed 's/.*load average: //' >"$run/logs/$mode.load"
	echo "(custos at $commit; $(nproc) cores; load average $(cat "$run/logs/$mode.load" 2>/dev/null) at the end; logs in $run/logs)"
done

if [ "${KEEP:-}" != 1 ]; then
	clean_round
	rm -rf "$DATA"
fi
exit "$failed"
