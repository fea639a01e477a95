#!/usr/bin/env bash
# peers.sh installs the peers compare.sh measures custos against, and prints
# nothing but errors. Sourced by compare.sh; run it alone to install ahead.
#
#   restic 0.14   Debian's package (apt-get), the oldest peer
#   restic 0.18.1 built from source with go install
#   kopia 0.21.1  built from source: `go install` is refused for kopia's
#                 module, so the module is fetched with `go mod download` and
#                 built in the folder it names
#
# Built binaries are cached in $PEER_CACHE (default ~/.cache/custos/bench),
# one folder per tool and version, and never rebuilt while they are there.
set -euo pipefail

PEER_CACHE=${PEER_CACHE:-$HOME/.cache/custos/bench}
RESTIC_NEW_VERSION=0.18.1
KOPIA_VERSION=0.21.1
RESTIC_NEW=$PEER_CACHE/restic@v$RESTIC_NEW_VERSION/restic
KOPIA=$PEER_CACHE/kopia@v$KOPIA_VERSION/kopia
RESTIC_OLD=/usr/bin/restic

sudo_if_needed() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
	echo "installing Debian package $1" >&2
	sudo_if_needed apt-get install -y "$1" >/dev/null ||
		{ sudo_if_needed apt-get update >/dev/null && sudo_if_needed apt-get install -y "$1" >/dev/null; }
}

install_peers() {
	[ -x "$RESTIC_OLD" ] || apt_install restic
	[ -x /usr/bin/time ] || apt_install time
	mkdir -p "$PEER_CACHE"
	if [ ! -x "$RESTIC_NEW" ]; then
		echo "building restic $RESTIC_NEW_VERSION into ${RESTIC_NEW%/*}" >&2
		local tmp
		tmp=$(mktemp -d "$PEER_CACHE/.restic-build.XXXXXX")
		# Outside any module, so the checkout's go.mod plays no part; built
		# into a temp folder and renamed, so a half-built binary is never used.
		(cd "$tmp" && GOBIN=$tmp GOFLAGS=-mod=mod go install "github.com/restic/restic/cmd/restic@v$RESTIC_NEW_VERSION")
		mkdir -p "${RESTIC_NEW%/*}"
		mv "$tmp/restic" "$RESTIC_NEW"
		rm -rf "$tmp"
	fi
	if [ ! -x "$KOPIA" ]; then
		echo "building kopia $KOPIA_VERSION into ${KOPIA%/*}" >&2
		local tmp dir
		tmp=$(mktemp -d "$PEER_CACHE/.kopia-build.XXXXXX")
		dir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "github.com/kopia/kopia@v$KOPIA_VERSION" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -n "$dir" ] || { echo "go mod download did not name kopia's folder" >&2; return 1; }
		(cd "$dir" && go build -o "$tmp/kopia" .)
		mkdir -p "${KOPIA%/*}"
		mv "$tmp/kopia" "$KOPIA"
		rm -rf "$tmp"
	fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	install_peers
	"$RESTIC_OLD" version
	"$RESTIC_NEW" version
	"$KOPIA" --version
fi
