#!/usr/bin/env bash
# The test command. It installs what the tests need (an S3 protocol server
# and staticcheck, cached under ~/.cache/custos), then runs formatting and
# static checks, the whole test suite, a race-detector pass over the
# concurrent packages, and a short fuzz run of every decoder.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CUSTOS_TOOLS:-$HOME/.cache/custos/bin}"
mkdir -p "$tools"

# install_tool NAME MODULE@VERSION: one folder per version, so that bumping a
# pin installs the new one instead of reusing a stale binary.
install_tool() {
	local name=$1 pkg=$2 dir
	dir="$tools/${pkg##*/}"
	if [ ! -x "$dir/$name" ]; then
		echo "installing $pkg into $dir (first run only)"
		GOBIN="$dir" go install "$pkg"
	fi
	printf '%s\n' "$dir/$name"
}

export CUSTOS_VERSITYGW
CUSTOS_VERSITYGW=$(install_tool versitygw github.com/versity/versitygw/cmd/versitygw@v1.8.0 | tail -n1)
staticcheck=$(install_tool staticcheck honnef.co/go/tools/cmd/staticcheck@v0.8.2 | tail -n1)

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go'))
if [ -n "$bad" ]; then
	echo "gofmt would change:"; echo "$bad"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
"$staticcheck" ./...
# chromium: the agent's status page is tested in a real headless browser.
echo "== chromium"
if ! command -v chromium >/dev/null 2>&1; then
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
	echo "installing chromium (first run only)"
	if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; then
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get update
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
	fi
fi
export CUSTOS_CHROMIUM
CUSTOS_CHROMIUM=$(command -v chromium)
echo "chromium: $CUSTOS_CHROMIUM"
echo "== go test"
go test -count=1 -timeout 20m ./...

echo "== go test -race (the concurrent packages)"
go test -race -count=1 -timeout 20m ./jobs ./shell ./repository/... ./agent ./metadata/...

echo "== fuzz (short run of every target)"
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" at the deadline without any failing
# input on a loaded machine (golang/go#75804, fixed in Go 1.27). 30000
# inputs take 3 to 10 s per target here.
fuzztime="${CUSTOS_FUZZTIME:-30000x}"
grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u | while read -r dir; do
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //'); do
		echo "fuzz $dir $target"
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$dir"
	done
done
echo "== all tests passed"
