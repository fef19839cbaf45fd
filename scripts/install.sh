#!/bin/sh
# Ferry agent installer for Linux, served by a Ferry controller at /install.sh.
#
#   curl -fsS --proto =https --pinnedpubkey 'sha256//PIN' -k https://CONTROLLER/install.sh \
#     | sh -s -- --controller CONTROLLER --token TOKEN [--name NAME] \
#       [--allow-plan-scripts] [--allow-exec-drivers]
#
# (`ferry tokens create --install-command` prints that line, exact.) It picks
# this host's OS and architecture, downloads the agent from the controller --
# pinned by the controller's public key, like the line above -- checks its
# SHA-256 against the controller's SHA256SUMS, then runs `ferry-agent install`,
# which enrols with the token, installs the service and starts it. Any failure
# stops it with a message and leaves the host as it was: downloads go to a
# temporary directory that is always removed, and `ferry-agent install` undoes
# its own steps when one fails.
#
# Root is needed to install a service; run it as root, or as a user who may
# sudo. Everything is inside main(), so a download cut short runs nothing.
set -eu

# Filled in by the controller that serves this script.
FERRY_CONTROLLER_DEFAULT='@@FERRY_CONTROLLER@@'
FERRY_PIN='@@FERRY_PIN@@'

say() { printf 'ferry install: %s\n' "$*"; }
die() {
	printf 'ferry install: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<USAGE
usage: sh install.sh --token TOKEN [--controller HOST:PORT] [--name NAME]
                       [--allow-plan-scripts] [--allow-exec-drivers]
  --token TOKEN          an enrolment token (ferry tokens create)
  --controller HOST:PORT the controller's agent port (default $FERRY_CONTROLLER_DEFAULT)
  --name NAME            this agent's name (default: the host name)
  --allow-plan-scripts   let the controller run recovery plan scripts on this host
  --allow-exec-drivers   let the controller run exec driver commands on this host
USAGE
}

# token_pin prints the controller pin a token carries, in standard base64
# (the token holds it unpadded base64url as its fifth field).
token_pin() {
	case $1 in
	f1.*.*.*.*) ;;
	*) return 1 ;;
	esac
	p=${1##*.}
	case $p in
	*[!A-Za-z0-9_-]* | "") return 1 ;;
	esac
	p=$(printf '%s' "$p" | tr '_-' '/+')
	case $((${#p} % 4)) in
	2) p="$p==" ;;
	3) p="$p=" ;;
	esac
	printf '%s' "$p"
}

sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	else
		die "neither sha256sum nor shasum is installed: cannot check the download"
	fi
}

main() {
	controller=$FERRY_CONTROLLER_DEFAULT
	token=
	name=
	service=
	allow=
	while [ $# -gt 0 ]; do
		case $1 in
		--controller) [ $# -ge 2 ] || die "--controller needs a value"; controller=$2; shift 2 ;;
		--controller=*) controller=${1#*=}; shift ;;
		--token) [ $# -ge 2 ] || die "--token needs a value"; token=$2; shift 2 ;;
		--token=*) token=${1#*=}; shift ;;
		--name) [ $# -ge 2 ] || die "--name needs a value"; name=$2; shift 2 ;;
		--name=*) name=${1#*=}; shift ;;
		--service-name) [ $# -ge 2 ] || die "--service-name needs a value"; service=$2; shift 2 ;;
		--allow-plan-scripts | --allow-exec-drivers) allow="$allow $1"; shift ;;
		-h | --help) usage; exit 0 ;;
		*) usage >&2; die "unknown argument: $1" ;;
		esac
	done
	case $FERRY_PIN in
	@@*) die "this copy of install.sh was not served by a controller: download it from https://CONTROLLER/install.sh" ;;
	esac
	[ -n "$token" ] || die "--token is required (ferry tokens create --install-command prints the whole command)"
	tokpin=$(token_pin "$token") || die "the token is malformed: want f1.<id>.<secret>.<expiry>.<pin> (copy it whole from ferry tokens create)"
	[ "$tokpin" = "$FERRY_PIN" ] || die "this token was not issued by the controller at $controller (the token's key pin $tokpin is not this controller's $FERRY_PIN)"

	case $(uname -s) in
	Linux) os=linux ;;
	*) die "this script installs the Linux agent, and this is $(uname -s); on Windows use install.ps1" ;;
	esac
	case $(uname -m) in
	x86_64 | amd64) arch=amd64 ;;
	aarch64 | arm64) arch=arm64 ;;
	*) die "no Ferry agent is built for $(uname -m) (builds: linux/amd64, linux/arm64, windows/amd64)" ;;
	esac

	sudo=
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "installing a service needs root: run this as root, or install sudo"
		sudo=sudo
	fi
	command -v curl >/dev/null 2>&1 || die "curl is not installed"

	tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-install.XXXXXX") || die "cannot create a temporary directory"
	trap 'rm -rf "$tmp"' EXIT
	trap 'exit 130' INT TERM

	file=ferry-agent-$os-$arch
	base=https://$controller/dist
	say "this host is $os/$arch; downloading $file from $controller"
	curl -fsS --proto =https --pinnedpubkey "sha256//$FERRY_PIN" -k -o "$tmp/SHA256SUMS" "$base/SHA256SUMS" ||
		die "could not download $base/SHA256SUMS (curl's message above); nothing was installed"
	curl -fsS --proto =https --pinnedpubkey "sha256//$FERRY_PIN" -k -o "$tmp/ferry-agent" "$base/$file" ||
		die "could not download $base/$file (curl's message above); nothing was installed"

	want=$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1; exit }' "$tmp/SHA256SUMS")
	[ -n "$want" ] || die "the controller's SHA256SUMS lists no $file; nothing was installed"
	got=$(sha256_of "$tmp/ferry-agent")
	[ "$got" = "$want" ] || die "checksum mismatch for $file: SHA256SUMS says $want, the download hashes to $got; nothing was installed"
	say "SHA-256 of $file checked: $got"

	chmod 0755 "$tmp/ferry-agent"
	version=$("$tmp/ferry-agent" version) || die "the downloaded agent does not run on this host; nothing was installed"
	say "installing ferry-agent $version (ferry-agent install: enrol, install the service, start it)"

	set -- install --controller "$controller" --token "$token"
	[ -z "$name" ] || set -- "$@" --name "$name"
	[ -z "$service" ] || set -- "$@" --service-name "$service"
	# shellcheck disable=SC2086 # $allow holds only the two fixed flags
	set -- "$@" $allow
	$sudo "$tmp/ferry-agent" "$@" || die "ferry-agent install failed (its message is above); it undid its steps, nothing was installed"
	say "done: ferry-agent $version runs as a service and is enrolled with $controller"
}

main "$@"
