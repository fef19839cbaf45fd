#!/usr/bin/env bash
# Builds the agent binaries a controller serves for one-command installs and
# upgrades (`ferry serve --dist DIR`): linux/amd64, linux/arm64 and
# windows/amd64, cgo-free, stamped with VERSION, plus SHA256SUMS (sha256sum
# format, which install.sh, install.ps1 and `ferry agents upgrade` check) and
# VERSION (the agent version the controller pushes).
#
#   scripts/dist.sh VERSION [OUTDIR]      # make dist: OUTDIR defaults to dist/
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/dist.sh VERSION [OUTDIR]}
out=${2:-dist}
go=${GO:-go}
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for target in linux/amd64 linux/arm64 windows/amd64; do
	os=${target%/*} arch=${target#*/}
	name=ferry-agent-$os-$arch
	[ "$os" = windows ] && name=$name.exe
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$go" build -trimpath \
		-ldflags "-s -w -X github.com/ferrydr/ferry/internal/buildinfo.Version=$version" \
		-o "$tmp/$name" ./cmd/ferry-agent
	echo "dist: built $name ($version)"
done
(cd "$tmp" && sha256sum ferry-agent-* >SHA256SUMS)
printf '%s\n' "$version" >"$tmp/VERSION"
# Moved in only once every build succeeded: binaries, then SHA256SUMS, then
# VERSION. A controller reading in between sees a new binary with an old sum,
# which every check refuses (it never pushes a version without its sums).
mv -f "$tmp"/ferry-agent-* "$out/"
mv -f "$tmp/SHA256SUMS" "$out/SHA256SUMS"
mv -f "$tmp/VERSION" "$out/VERSION"
echo "dist: $out/SHA256SUMS, $out/VERSION"
