// Package installer installs, upgrades and removes ferry-agent as an OS
// service, and runs the service's supervisor.
//
// Install enrols (unless the state directory already holds an enrolment),
// copies the binary into place, writes the agent's configuration, installs
// the service with github.com/kardianos/service — a systemd unit, a SysV init
// script, or a Windows service, rendered here so tests can read exactly what
// is written — and starts it. Running it again over an installed agent
// upgrades the binary in place and keeps the enrolment. Uninstall removes the
// service and everything Install put on the host (kardianos leaves SysV rc
// links behind; Uninstall does not), keeping the state directory unless
// purged.
//
// The service runs `ferry-agent run --config FILE --supervise`: Supervise
// runs the agent as a child process, restarts it when it exits, and carries
// out controller-pushed upgrades — it swaps in the binary the agent staged,
// runs it on trial and restores the previous binary unless the controller
// confirms the new one (see agent.UpgradeConfig and msg.MethodUpgrade).
package installer
