package installer

import (
	"fmt"
	"path"
	"strings"

	"github.com/kardianos/service"
)

// Service managers Install supports, by kardianos's names for them.
const (
	SystemSystemd = "linux-systemd"
	SystemSysV    = "unix-systemv"
	SystemWindows = "windows-service"
)

const (
	displayName = "Ferry agent"
	description = "Replicates this host's disks to a Ferry controller for site recovery (ferry-agent)."
	docsURL     = "https://github.com/ferrydr/ferry/blob/main/docs/install.md"
)

// definition is the kardianos configuration of the agent's service on a
// service manager. The systemd unit and the SysV script are rendered here in
// full and handed to kardianos as templates without actions, so what is
// written is exactly what SystemdUnit and SysVScript return.
func definition(system, name string, l Layout) (*service.Config, error) {
	c := &service.Config{
		Name:        name,
		DisplayName: displayName,
		Description: description,
		Executable:  l.Binary,
		Arguments:   l.serviceArgs(),
		Option:      service.KeyValue{},
	}
	switch system {
	case SystemSystemd:
		c.Option["SystemdScript"] = SystemdUnit(name, l)
	case SystemSysV:
		c.Option["SysvScript"] = SysVScript(name, l)
	case SystemWindows:
		c.DisplayName = displayName + " (" + name + ")"
		if name == DefaultServiceName {
			c.DisplayName = displayName
		}
		// Start at boot once the network is up; the service control manager
		// restarts a service that dies (the supervisor restarts the agent).
		c.Option["StartType"] = "automatic"
		c.Option["DelayedAutoStart"] = true
		c.Option["OnFailure"] = "restart"
		c.Option["OnFailureDelayDuration"] = "5s"
		c.Option["OnFailureResetPeriod"] = 24 * 60 * 60
	default:
		return nil, fmt.Errorf("%w: %s (Ferry installs into systemd, SysV init and Windows services)", ErrUnsupportedSystem, system)
	}
	return c, nil
}

// SystemdUnit is the unit file Install writes under systemd.
//
// The agent runs as root: it reads raw disks and image files anywhere,
// freezes filesystems, writes staged disks at recovery sites and runs the
// power commands it is given. Hardening therefore keeps what cannot break
// that work: no privilege gain, /usr /boot /etc read-only except the
// binary's own directory (upgrades replace the binary), no module loading,
// no cgroup or realtime changes, native syscalls only, private umask.
// Left out on purpose: PrivateTmp/ProtectHome (images may live there),
// ProtectKernelTunables (the change tracker uses tracefs), ProtectClock and
// DevicePolicy (both cut access to block devices), MemoryDenyWriteExecute
// (drivers such as qemu need W+X).
func SystemdUnit(name string, l Layout) string {
	exec := []string{systemdQuote(l.Binary)}
	for _, a := range l.serviceArgs() {
		exec = append(exec, systemdQuote(a))
	}
	return `# Written by ferry-agent install; ferry-agent uninstall removes it.
[Unit]
Description=` + displayName + ` (` + name + `): site-recovery replication to a Ferry controller
Documentation=` + docsURL + `
Wants=network-online.target
After=network-online.target
ConditionFileIsExecutable=` + l.Binary + `
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=simple
ExecStart=` + strings.Join(exec, " ") + `
# The supervisor restarts the agent itself; this restarts the supervisor.
Restart=on-failure
RestartSec=5s
# SIGTERM to the supervisor, which stops the agent; anything left is killed.
KillMode=mixed
TimeoutStopSec=30s
UMask=0077
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=full
ReadWritePaths=` + systemdQuote(path.Dir(l.Binary)) + `
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
`
}

// systemdQuote quotes a word of a systemd command line when it needs it.
func systemdQuote(s string) string {
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// SysVScript is the init script Install writes under SysV init. Unlike
// kardianos's own it polls a stop every 0.1 s instead of every second,
// answers status with the LSB codes (0 running, 3 stopped) and sends the
// output to one log file.
func SysVScript(name string, l Layout) string {
	cmd := []string{shQuote(l.Binary)}
	for _, a := range l.serviceArgs() {
		cmd = append(cmd, shQuote(a))
	}
	return `#!/bin/sh
### BEGIN INIT INFO
# Provides:          ` + name + `
# Required-Start:    $network $remote_fs $syslog
# Required-Stop:     $network $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: ` + displayName + `
# Description:       ` + description + `
### END INIT INFO
# Written by ferry-agent install; ferry-agent uninstall removes it.

name=` + shQuote(name) + `
binary=` + shQuote(l.Binary) + `
pid_file=` + shQuote(l.PIDFile) + `
log_file=` + shQuote(l.LogFile) + `

is_running() {
	[ -f "$pid_file" ] || return 1
	pid=$(cat "$pid_file" 2>/dev/null)
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

case "$1" in
start)
	if is_running; then
		echo "Running"
		exit 0
	fi
	[ -x "$binary" ] || { echo "$binary is missing"; exit 5; }
	` + strings.Join(cmd, " ") + ` >>"$log_file" 2>&1 </dev/null &
	echo $! >"$pid_file"
	if is_running; then
		echo "Started $name"
	else
		echo "Unable to start $name, see $log_file"
		exit 1
	fi
	;;
stop)
	if ! is_running; then
		rm -f "$pid_file"
		echo "Stopped"
		exit 0
	fi
	pid=$(cat "$pid_file")
	kill -TERM "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid"
	fi
	rm -f "$pid_file"
	echo "Stopped"
	;;
restart | force-reload)
	"$0" stop && "$0" start
	;;
status)
	if is_running; then
		echo "Running"
		exit 0
	fi
	echo "Stopped"
	exit 3
	;;
*)
	echo "Usage: $0 {start|stop|restart|status}"
	exit 2
	;;
esac
exit 0
`
}

// shQuote quotes a word for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
