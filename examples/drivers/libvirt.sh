#!/bin/sh
# libvirt.sh — an exec driver for Ferry that runs a recovered machine as a
# libvirt domain through virsh. (Ferry also has a built-in libvirt driver,
# `targets add --driver libvirt`; this script is the same idea as a starting
# point for sites that want their own domain XML.)
#
#   ferry targets add dr1 --agent drhost --dir /var/lib/ferry-dr --driver exec \
#       --start  '/etc/ferry/libvirt.sh start' \
#       --stop   '/etc/ferry/libvirt.sh stop' \
#       --status '/etc/ferry/libvirt.sh status'
#
# The target agent must run with --allow-exec-drivers. It runs each command
# with /bin/sh -c, kills its process group after 5 minutes, and takes exit 0
# as success. `status` prints one of: running, stopped, absent.
#
# Environment Ferry gives every driver command (docs/failover.md, "Driver
# environment"):
#   FERRY_JOB      the job id
#   FERRY_KIND     failover, planned-failover, test-failover, change-point, cleanup, ...
#   FERRY_MACHINE  the domain name: M, or M-test for a test failover
#   FERRY_TARGET   the target's name
#   FERRY_POINT    the recovery point id the job moves to
#   FERRY_DISKS    the disk paths, one per line, in the point's disk order
#                  (DIR/M/<set>/<disk>.raw, or <disk>.<format> for a non-raw target)
#   FERRY_TEST     1 for a test failover: the domain must come up isolated
#                  from production networks; else 0
#   FERRY_CPUS     protect --cpus (0: not given)
#   FERRY_MEMORY   protect --memory, in bytes (0: not given)
#   FERRY_NICS     protect --nic networks, one per line (libvirt network names here)
#   FERRY_SET      the disk set: live or test-<job>
#   FERRY_DIRECTION forward or reverse; FERRY_PLAN, FERRY_GROUP, FERRY_PHASE
#                  (plans; empty otherwise)
#
# This script's own settings (set them in the command string):
#   LIBVIRT_URI           the connection (default: virsh's, LIBVIRT_DEFAULT_URI or qemu:///system)
#   LIBVIRT_TEST_NETWORK  the isolated network test failovers' NICs join
#                         (default: none, a test domain has no NIC)
#   LIBVIRT_DOMAIN_TYPE   kvm (default), or qemu for software emulation
#   LIBVIRT_STOP_WAIT     seconds stop waits for an ACPI shutdown before
#                         destroying the domain (default 120)
#
# start defines the domain when it does not exist, with the current disks
# (the disk paths change between failovers, so an existing domain that
# Ferry defined is redefined while it is shut off).
set -eu

action=${1:-}
machine=${FERRY_MACHINE:?FERRY_MACHINE is not set: run me as a Ferry exec driver}
virsh() { command virsh ${LIBVIRT_URI:+-c "$LIBVIRT_URI"} "$@"; }

# xml_escape escapes a value for an XML attribute.
xml_escape() { printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' -e "s/'/\&apos;/g"; }

domain_xml() {
	cpus=${FERRY_CPUS:-0}; [ "$cpus" -gt 0 ] || cpus=1
	mem=$(( ${FERRY_MEMORY:-0} / 1024 )); [ "$mem" -gt 0 ] || mem=1048576
	echo "<domain type='${LIBVIRT_DOMAIN_TYPE:-kvm}'>"
	echo "  <name>$(xml_escape "$machine")</name>"
	echo "  <description>defined by Ferry (job $(xml_escape "${FERRY_JOB:-}"), point $(xml_escape "${FERRY_POINT:-}"))</description>"
	echo "  <memory unit='KiB'>$mem</memory>"
	echo "  <vcpu>$cpus</vcpu>"
	echo "  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
	echo "  <features><acpi/><apic/></features>"
	echo "  <on_poweroff>destroy</on_poweroff>"
	echo "  <devices>"
	old_ifs=$IFS
	IFS='
'
	n=0
	for d in ${FERRY_DISKS:-}; do
		fmt=raw
		case $d in *.qcow2) fmt=qcow2 ;; *.vmdk) fmt=vmdk ;; *.vhdx) fmt=vhdx ;; esac
		dev=vd$(printf "\\$(printf '%03o' $((97 + n)))")
		echo "    <disk type='file' device='disk'><driver name='qemu' type='$fmt'/><source file='$(xml_escape "$d")'/><target dev='$dev' bus='virtio'/></disk>"
		n=$((n + 1))
	done
	if [ "${FERRY_TEST:-0}" = 1 ]; then
		# A test failover never joins a production network.
		for _ in ${FERRY_NICS:-}; do
			if [ -n "${LIBVIRT_TEST_NETWORK:-}" ]; then
				echo "    <interface type='network'><source network='$(xml_escape "$LIBVIRT_TEST_NETWORK")'/><model type='virtio'/></interface>"
			fi
		done
	else
		for net in ${FERRY_NICS:-}; do
			echo "    <interface type='network'><source network='$(xml_escape "$net")'/><model type='virtio'/></interface>"
		done
	fi
	IFS=$old_ifs
	echo "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
	echo "  </devices>"
	echo "</domain>"
}

state() { virsh domstate "$machine" 2>/dev/null || echo absent; }

start() {
	case $(state) in
	running) return 0 ;; # start is idempotent
	absent) ;;
	*)
		if ! virsh dumpxml "$machine" | grep -q '<description>defined by Ferry'; then
			echo "libvirt.sh: a domain named $machine exists and Ferry did not define it; not touching it" >&2
			exit 1
		fi
		virsh undefine "$machine" >/dev/null ;;
	esac
	[ -n "${FERRY_DISKS:-}" ] || { echo "libvirt.sh: FERRY_DISKS is empty" >&2; exit 1; }
	xml=$(mktemp)
	trap 'rm -f "$xml"' EXIT
	domain_xml >"$xml"
	virsh define "$xml" >/dev/null
	virsh start "$machine" >/dev/null
}

stop() {
	case $(state) in
	running | paused | "in shutdown") ;;
	*) return 0 ;; # not running: stop is idempotent
	esac
	virsh shutdown "$machine" >/dev/null 2>&1 || true
	i=0
	while [ "$(state)" = running ] && [ "$i" -lt "${LIBVIRT_STOP_WAIT:-120}" ]; do
		sleep 1
		i=$((i + 1))
	done
	if [ "$(state)" != "shut off" ]; then
		virsh destroy "$machine" >/dev/null
	fi
}

status() {
	case $(state) in
	running | paused | "in shutdown" | blocked) echo running ;;
	absent) echo absent ;;
	*) echo stopped ;;
	esac
}

case $action in
start) start ;;
stop) stop ;;
status) status ;;
*) echo "usage: libvirt.sh start|stop|status (as a Ferry exec driver)" >&2; exit 2 ;;
esac
