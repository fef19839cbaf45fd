package installer

import (
	"path"
	"strings"

	"github.com/ferrydr/ferry/protocol/msg"
)

// DefaultServiceName is the service's name, and the base of every path
// Install uses; a different name (tests, two agents on one host) gets
// paths of its own.
const DefaultServiceName = "ferry-agent"

// Layout is where an installed agent's files live.
type Layout struct {
	Binary     string // the installed executable
	ConfigDir  string // /etc/ferry; %ProgramData%\Ferry
	ConfigFile string // the agent's configuration, read by `run --config`
	Manifest   string // what Install put on the host, for Uninstall and Status
	StateDir   string // enrolment and block maps; kept by Uninstall unless purged
	// LogFile receives the service's output where no journal does: SysV
	// (the init script redirects to it) and Windows (the agent opens it).
	LogFile string
	// PIDFile is the SysV init script's record of the supervisor's pid.
	PIDFile string
	// Allow is what the service's command line lets the controller run on
	// this host (--allow-plan-scripts, --allow-exec-drivers): on the command
	// line, the service definition shows it, and a reinstall without the
	// flags withdraws it.
	Allow msg.Permissions
}

// DefaultLayout is the layout for service name on goos; getenv reads the
// environment (Windows folders come from it).
func DefaultLayout(goos, name string, getenv func(string) string) Layout {
	if name == "" {
		name = DefaultServiceName
	}
	if goos == "windows" {
		pf := getenv("ProgramFiles")
		if pf == "" {
			pf = `C:\Program Files`
		}
		pd := getenv("ProgramData")
		if pd == "" {
			pd = `C:\ProgramData`
		}
		cfgDir := winJoin(pd, "Ferry")
		state := winJoin(cfgDir, "agent") // agent.DefaultStateDir
		if name != DefaultServiceName {
			state = winJoin(cfgDir, name)
		}
		return Layout{
			Binary:     winJoin(pf, "Ferry", name+".exe"),
			ConfigDir:  cfgDir,
			ConfigFile: winJoin(cfgDir, name+".yaml"),
			Manifest:   winJoin(cfgDir, name+".installed.json"),
			StateDir:   state,
			LogFile:    winJoin(cfgDir, "logs", name+".log"),
		}
	}
	return Layout{
		Binary:     path.Join("/usr/local/bin", name),
		ConfigDir:  "/etc/ferry",
		ConfigFile: path.Join("/etc/ferry", name+".yaml"),
		Manifest:   path.Join("/etc/ferry", name+".installed.json"),
		StateDir:   path.Join("/var/lib", name),
		LogFile:    path.Join("/var/log", name+".log"),
		PIDFile:    path.Join("/var/run", name+".pid"),
	}
}

// winJoin joins Windows path elements (filepath would use this host's
// separator, and the layout is tested on Linux).
func winJoin(elem ...string) string {
	out := strings.TrimRight(elem[0], `\`)
	for _, e := range elem[1:] {
		out += `\` + strings.Trim(e, `\`)
	}
	return out
}

// serviceArgs are the arguments the service runs the binary with.
func (l Layout) serviceArgs() []string {
	args := []string{"run", "--config", l.ConfigFile, "--supervise"}
	if l.Allow.PlanScripts {
		args = append(args, "--allow-plan-scripts")
	}
	if l.Allow.ExecDrivers {
		args = append(args, "--allow-exec-drivers")
	}
	return args
}

// stagingFiles are the binaries an upgrade or an install leaves beside the
// installed one while it works.
func (l Layout) stagingFiles() []string {
	return []string{l.Binary + ".new", l.Binary + ".prev", l.Binary + ".tmp"}
}
