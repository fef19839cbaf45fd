package vsphere

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Option names a target's --driver-opt keys use (docs/drivers.md).
const (
	OptURL             = "url"              // https://vcenter.example/sdk (required)
	OptCredentialsFile = "credentials-file" // file with user= and password= lines (required)
	OptDatacenter      = "datacenter"       // default: the only datacenter
	OptDatastore       = "datastore"        // the NFS datastore holding the target directory (required)
	OptMount           = "mount"            // where that datastore is mounted on the agent's host (default: the target directory)
	OptPool            = "pool"             // resource pool path; default: the datacenter's default pool
	OptFolder          = "folder"           // VM folder path; default: the datacenter's VM folder
	OptVMDir           = "vm-dir"           // datastore directory for the VMs' own files (default ferry-vms)
	OptTestNetwork     = "test-network"     // port group of test machines; unset: their NICs are disconnected
	OptInsecure        = "insecure"         // true: do not verify vCenter's TLS certificate
	OptCAFile          = "ca-file"          // PEM file of the CA(s) that sign vCenter's certificate
	OptGuestID         = "guest-id"         // vSphere guest OS identifier (default otherGuest64)
	OptController      = "scsi-controller"  // lsilogic-sas (default), pvscsi, lsilogic
	OptNIC             = "nic-model"        // e1000e (default), vmxnet3, e1000
	OptShutdownTimeout = "shutdown-timeout" // guest shutdown, then power off (default 3m)
	OptTaskTimeout     = "task-timeout"     // bound on each vSphere task (default 10m)
	OptGuestDomain     = "guest-domain"     // domain for Linux guest customization (default localdomain)
	OptNetworks        = "networks"         // comma-separated port groups the network map names (checked by Validate)
)

var knownOptions = map[string]bool{
	OptURL: true, OptCredentialsFile: true, OptDatacenter: true, OptDatastore: true, OptMount: true,
	OptPool: true, OptFolder: true, OptVMDir: true, OptTestNetwork: true, OptInsecure: true,
	OptGuestID: true, OptController: true, OptNIC: true, OptShutdownTimeout: true, OptTaskTimeout: true,
	OptGuestDomain: true, OptNetworks: true, OptCAFile: true,
}

// Defaults.
const (
	DefaultVMDir           = "ferry-vms"
	DefaultGuestID         = "otherGuest64"
	DefaultController      = "lsilogic-sas"
	DefaultNIC             = "e1000e"
	DefaultShutdownTimeout = 3 * time.Minute
	DefaultTaskTimeout     = 10 * time.Minute
	DefaultGuestDomain     = "localdomain"
)

// ErrOption is a bad or missing driver option.
var ErrOption = errors.New("vsphere driver option")

// Options are a target's parsed vSphere driver options.
type Options struct {
	URL             *url.URL
	User, Password  string
	Datacenter      string
	Datastore       string
	Mount           string
	Pool            string
	Folder          string
	VMDir           string
	TestNetwork     string
	Insecure        bool
	CAFile          string
	GuestID         string
	Controller      string
	NIC             string
	ShutdownTimeout time.Duration
	TaskTimeout     time.Duration
	GuestDomain     string
	Networks        []string
}

func optErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrOption, fmt.Sprintf(format, a...))
}

// ParseOptions checks the options and reads the credentials file. It does
// not contact vCenter (Validate does).
func ParseOptions(opts map[string]string) (*Options, error) { return parseOptions(opts, false) }

// parseOptions is ParseOptions; at home (a machine's home site, where the
// driver only powers an existing VM) no datastore is needed.
func parseOptions(opts map[string]string, home bool) (*Options, error) {
	var unknown []string
	for k := range opts {
		if !knownOptions[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, optErr("unknown option(s) %s", strings.Join(unknown, ", "))
	}
	for _, k := range []string{"user", "password"} {
		if _, ok := opts[k]; ok {
			return nil, optErr("%s is never given as an option: put it in the credentials-file", k)
		}
	}
	o := &Options{
		Datacenter: opts[OptDatacenter], Datastore: opts[OptDatastore], Pool: opts[OptPool],
		Folder: opts[OptFolder], TestNetwork: opts[OptTestNetwork],
		VMDir: withDefault(opts[OptVMDir], DefaultVMDir), GuestID: withDefault(opts[OptGuestID], DefaultGuestID),
		Controller: withDefault(opts[OptController], DefaultController), NIC: withDefault(opts[OptNIC], DefaultNIC),
		GuestDomain: withDefault(opts[OptGuestDomain], DefaultGuestDomain),
	}
	for _, n := range strings.Split(opts[OptNetworks], ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.Networks = append(o.Networks, n)
		}
	}
	raw := opts[OptURL]
	if raw == "" {
		return nil, optErr("url is required (https://VCENTER/sdk)")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, optErr("url %q: want https://HOST[/sdk]", raw)
	}
	if u.User != nil {
		return nil, optErr("url %q carries credentials: put them in the credentials-file", u.Redacted())
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	o.URL = u
	if o.Datastore == "" && !home {
		return nil, optErr("datastore is required (the NFS datastore holding the target directory)")
	}
	if m := opts[OptMount]; m != "" {
		if !filepath.IsAbs(m) {
			return nil, optErr("mount %q is not an absolute path", m)
		}
		o.Mount = filepath.Clean(m)
	}
	if strings.HasPrefix(o.VMDir, "/") || strings.Contains(o.VMDir, "..") || strings.ContainsAny(o.VMDir, "[]\\") {
		return nil, optErr("vm-dir %q: want a relative directory on the datastore", o.VMDir)
	}
	if s := opts[OptInsecure]; s != "" {
		if o.Insecure, err = strconv.ParseBool(s); err != nil {
			return nil, optErr("insecure %q: want true or false", s)
		}
	}
	if o.CAFile = opts[OptCAFile]; o.CAFile != "" {
		if o.Insecure {
			return nil, optErr("ca-file and insecure contradict each other")
		}
		if _, err := os.Stat(o.CAFile); err != nil {
			return nil, optErr("ca-file: %v", err)
		}
	}
	switch o.Controller {
	case "lsilogic-sas", "pvscsi", "lsilogic":
	default:
		return nil, optErr("controller %q: want lsilogic-sas, pvscsi or lsilogic", o.Controller)
	}
	switch o.NIC {
	case "e1000e", "vmxnet3", "e1000":
	default:
		return nil, optErr("nic %q: want e1000e, vmxnet3 or e1000", o.NIC)
	}
	if o.ShutdownTimeout, err = durationOpt(opts, OptShutdownTimeout, DefaultShutdownTimeout); err != nil {
		return nil, err
	}
	if o.TaskTimeout, err = durationOpt(opts, OptTaskTimeout, DefaultTaskTimeout); err != nil {
		return nil, err
	}
	cf := opts[OptCredentialsFile]
	if cf == "" {
		return nil, optErr("credentials-file is required (a file with user= and password= lines)")
	}
	if o.User, o.Password, err = readCredentials(cf); err != nil {
		return nil, err
	}
	return o, nil
}

func withDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func durationOpt(opts map[string]string, k string, d time.Duration) (time.Duration, error) {
	s := opts[k]
	if s == "" {
		return d, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, optErr("%s %q: want a positive duration such as 90s or 5m", k, s)
	}
	return v, nil
}

// readCredentials reads user= and password= lines. On Unix the file must
// not be readable by group or others.
func readCredentials(path string) (user, password string, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", "", optErr("credentials-file: %v", err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return "", "", optErr("credentials-file %s has mode %v: it must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", optErr("credentials-file: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		switch k = strings.TrimSpace(k); {
		case !ok:
			return "", "", optErr("credentials-file %s line %d: want key=value", path, n)
		case k == "user":
			user = strings.TrimSpace(v)
		case k == "password":
			password = v // kept as written: a password may end in spaces
		default:
			return "", "", optErr("credentials-file %s line %d: unknown key %q (want user, password)", path, n, k)
		}
	}
	if user == "" || password == "" {
		return "", "", optErr("credentials-file %s: needs both user= and password=", path)
	}
	return user, password, nil
}
