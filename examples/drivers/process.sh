#!/bin/sh
# process.sh — an exec driver for Ferry that runs a recovered machine as a
# plain process on the target host: a qemu process using the recovered disks,
# or (the default) a stand-in process that holds them open, for trying
# Ferry out and for tests.
#
#   ferry targets add dr1 --agent drhost --dir /srv/ferry --driver exec \
#       --start  '/etc/ferry/process.sh start' \
#       --stop   '/etc/ferry/process.sh stop' \
#       --status '/etc/ferry/process.sh status'
#
# The target agent must run with --allow-exec-drivers. It runs each command
# with /bin/sh -c, kills its process group after 5 minutes, and takes exit 0
# as success. `status` prints one of: running, stopped, absent.
#
# Environment Ferry gives every driver command (docs/failover.md, "Driver
# environment"):
#   FERRY_JOB      the job id
#   FERRY_KIND     failover, planned-failover, test-failover, change-point, cleanup, ...
#   FERRY_MACHINE  the machine's name at the target: M, or M-test for a test failover
#   FERRY_TARGET   the target's name
#   FERRY_POINT    the recovery point id the job moves to
#   FERRY_DISKS    the disk paths, one per line, in the point's disk order
#                  (DIR/M/<set>/<disk>.raw, or <disk>.<format> for a non-raw target)
#   FERRY_TEST     1 for a test failover: the machine must come up isolated
#                  from production networks; else 0
#   FERRY_CPUS     protect --cpus (0: not given)
#   FERRY_MEMORY   protect --memory, in bytes (0: not given)
#   FERRY_NICS     protect --nic networks, one per line
#   FERRY_SET      the disk set: live or test-<job>
#   FERRY_DIRECTION forward or reverse; FERRY_PLAN, FERRY_GROUP, FERRY_PHASE
#                  (plans; empty otherwise)
#
# This script's own settings (set them in the command string, e.g.
# --start 'PROCESS_RUN=qemu /etc/ferry/process.sh start'):
#   PROCESS_DIR    where it keeps <machine>/pid and <machine>/log
#                  (default /var/lib/ferry-process)
#   PROCESS_RUN    standin (default): a process that opens the disks and waits;
#                  qemu: qemu-system-x86_64 with the disks (virtio), FERRY_CPUS
#                  CPUs, FERRY_MEMORY memory, user networking, no network
#                  at all for a test failover
#   PROCESS_STOP_WAIT  seconds stop waits after SIGTERM before SIGKILL (default 30)
set -eu

action=${1:-}
machine=${FERRY_MACHINE:?FERRY_MACHINE is not set: run me as a Ferry exec driver}
case $machine in
*/* | .* | "") echo "process.sh: bad machine name: $machine" >&2; exit 1 ;;
esac
dir=${PROCESS_DIR:-/var/lib/ferry-process}/$machine
pidfile=$dir/pid

# alive prints the pid of the machine's process when it runs: the pid file
# names it and its start time (so a reused pid is not taken for it).
alive() {
	[ -f "$pidfile" ] || return 1
	read -r pid start <"$pidfile" || return 1
	[ -r "/proc/$pid/stat" ] || return 1
	now=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
	[ "$now" = "$start" ] || return 1
	echo "$pid"
}

start() {
	if alive >/dev/null; then
		return 0 # already running: start is idempotent
	fi
	mkdir -p "$dir"
	case ${PROCESS_RUN:-standin} in
	standin)
		# Opens every disk read-only (it fails if one is missing) and holds
		# the first seven open, as a machine would, until stopped.
		set -- sh -c 'n=3; for d in "$@"; do
			if [ "$n" -le 9 ]; then eval "exec $n<\"\$d\"" || exit 1; n=$((n + 1)); else [ -r "$d" ] || exit 1; fi
		done; exec sleep 2147483647' standin
		old_ifs=$IFS
		IFS='
'
		for d in ${FERRY_DISKS:-}; do set -- "$@" "$d"; done
		IFS=$old_ifs
		;;
	qemu)
		cpus=${FERRY_CPUS:-0}; [ "$cpus" -gt 0 ] || cpus=1
		mem=$(( ${FERRY_MEMORY:-0} / 1048576 )); [ "$mem" -gt 0 ] || mem=512
		set -- qemu-system-x86_64 -name "$machine" -machine accel=kvm:tcg -smp "$cpus" -m "$mem" -display none
		old_ifs=$IFS
		IFS='
'
		for d in ${FERRY_DISKS:-}; do
			fmt=raw
			case $d in *.qcow2) fmt=qcow2 ;; *.vmdk) fmt=vmdk ;; *.vhdx) fmt=vhdx ;; esac
			set -- "$@" -drive "file=$d,format=$fmt,if=virtio"
		done
		IFS=$old_ifs
		if [ "${FERRY_TEST:-0}" = 1 ]; then
			set -- "$@" -nic none # a test failover sees no network at all
		else
			set -- "$@" -nic user,model=virtio-net-pci
		fi
		;;
	*) echo "process.sh: PROCESS_RUN must be standin or qemu, not ${PROCESS_RUN}" >&2; exit 1 ;;
	esac
	# A new session, so the agent's kill of this command's process group
	# after it returns does not reach the machine; no inherited descriptors,
	# so the agent does not wait for the machine to close them.
	setsid "$@" </dev/null >>"$dir/log" 2>&1 &
	pid=$!
	sleep 0.2
	if ! [ -r "/proc/$pid/stat" ]; then
		echo "process.sh: $machine exited at once; see $dir/log:" >&2
		tail -n 5 "$dir/log" >&2
		exit 1
	fi
	echo "$pid $(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f20)" >"$pidfile.tmp"
	mv "$pidfile.tmp" "$pidfile"
}

stop() {
	pid=$(alive) || return 0 # not running: stop is idempotent
	kill -TERM "$pid"
	i=0
	while [ -r "/proc/$pid/stat" ] && [ "$i" -lt $(( ${PROCESS_STOP_WAIT:-30} * 10 )) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if [ -r "/proc/$pid/stat" ]; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	while [ -r "/proc/$pid/stat" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.1; done
}

status() {
	if alive >/dev/null; then
		echo running
	elif [ -d "$dir" ]; then
		echo stopped
	else
		echo absent
	fi
}

case $action in
start) start ;;
stop) stop ;;
status) status ;;
*) echo "usage: process.sh start|stop|status (as a Ferry exec driver)" >&2; exit 2 ;;
esac
