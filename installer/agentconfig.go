package installer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/fsutil"
)

// AgentConfig is the agent's configuration file (ConfigFile), which the
// service passes to `ferry-agent run --config`. Flags given to run override
// it.
type AgentConfig struct {
	// StateDir holds the enrolment and the block maps.
	StateDir string `yaml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFile, when set, receives the agent's log (Windows; elsewhere the
	// service manager keeps the output).
	LogFile string `yaml:"log_file,omitempty"`
	// Scan lists directories searched for disk image files (inventory).
	Scan []string `yaml:"scan,omitempty"`
	// Streams is the number of data streams per cycle; 0 = the default.
	Streams int `yaml:"streams,omitempty"`
	// UpgradeTrial is how long a controller-pushed binary may run before the
	// controller confirms it; past it, the previous binary is restored.
	UpgradeTrial string `yaml:"upgrade_trial,omitempty"`
	// TrackWrites makes points of raw images by tracked freezes
	// (`ferry-agent run --track-writes`, docs/replication.md §5.2a).
	TrackWrites bool `yaml:"track_writes,omitempty"`
	// MaxCapture bounds one tracked freeze's capture in bytes; 0 = the
	// default.
	MaxCapture int64 `yaml:"max_capture,omitempty"`
	// MaxFreeze bounds every freeze, as a duration such as 2s ("": the
	// default, snapshot.DefaultMaxFreeze; at most 60s).
	MaxFreeze string `yaml:"max_freeze,omitempty"`
	// FreezeOwnFS lists the mount points tracked freezes may freeze
	// although they are the root filesystem or hold the agent's state or
	// log (`ferry-agent run --freeze-own-fs`).
	FreezeOwnFS []string `yaml:"freeze_own_fs,omitempty"`
}

// DefaultUpgradeTrial is AgentConfig.UpgradeTrial's default.
const DefaultUpgradeTrial = time.Minute

// DefaultAgentConfig is what Install writes for a layout.
func DefaultAgentConfig(l Layout, goos string) AgentConfig {
	c := AgentConfig{StateDir: l.StateDir, LogLevel: "info", UpgradeTrial: DefaultUpgradeTrial.String()}
	if goos == "windows" {
		c.LogFile = l.LogFile
	}
	return c
}

// Validate checks the values a hand edit may have broken.
func (c AgentConfig) Validate() error {
	if c.StateDir == "" {
		return errors.New("state_dir is required")
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.Streams < 0 {
		return fmt.Errorf("streams %d: want 0 (default) or more", c.Streams)
	}
	if _, err := c.Trial(); err != nil {
		return err
	}
	if _, err := c.Freeze(); err != nil {
		return err
	}
	for _, m := range c.FreezeOwnFS {
		if !filepath.IsAbs(m) {
			return fmt.Errorf("freeze_own_fs %q: want the absolute path of a mount point", m)
		}
	}
	return nil
}

// Freeze is MaxFreeze as a duration (0 when not set: the agent's default).
func (c AgentConfig) Freeze() (time.Duration, error) {
	if c.MaxFreeze == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(c.MaxFreeze)
	if err != nil {
		return 0, fmt.Errorf("max_freeze %q: want a duration such as 2s", c.MaxFreeze)
	}
	if err := snapshot.CheckMaxFreeze(d); err != nil {
		return 0, fmt.Errorf("max_freeze %q: %w", c.MaxFreeze, err)
	}
	return d, nil
}

// Trial is UpgradeTrial as a duration (default DefaultUpgradeTrial).
func (c AgentConfig) Trial() (time.Duration, error) {
	if c.UpgradeTrial == "" {
		return DefaultUpgradeTrial, nil
	}
	d, err := time.ParseDuration(c.UpgradeTrial)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("upgrade_trial %q: want a positive duration such as 60s", c.UpgradeTrial)
	}
	return d, nil
}

// LoadAgentConfig reads and checks a configuration file; unknown keys are
// errors, so a typo does not pass silently.
func LoadAgentConfig(path string) (AgentConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return AgentConfig{}, err
	}
	var c AgentConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return AgentConfig{}, &PathError{Op: "read agent config", Path: path, Err: err}
	}
	if err := c.Validate(); err != nil {
		return AgentConfig{}, &PathError{Op: "read agent config", Path: path, Err: err}
	}
	return c, nil
}

// writeAgentConfig writes c with a header that says where it comes from.
func writeAgentConfig(path string, c AgentConfig) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	head := "# ferry-agent configuration, written by `ferry-agent install` and read by the\n" +
		"# service (`ferry-agent run --config " + path + "`). Restart the service after\n" +
		"# editing it. `ferry-agent uninstall` removes it.\n"
	return fsutil.WriteFileAtomic(path, append([]byte(head), b...), 0o644)
}
