package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/repokey"
)

// keyOptions are the flags of `ferry-agent key`.
type keyOptions struct {
	stateDir string
	keyFile  string
}

func newKeyCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "The encrypted repository's private key on this agent (for staging and moves)",
		Long: `An agent that holds an encrypted repository's private key can stage the
repository's points and take failovers without --key-file: the controller
sends it the chunks as stored (still encrypted) and the agent decrypts and
verifies them. The controller only ever learns the key's fingerprint.`,
	}
	o := keyOptions{stateDir: agent.DefaultStateDir()}
	install := &cobra.Command{
		Use:   "install --key-file PATH [--state-dir DIR]",
		Short: "Check a repository private key and store it in the state directory (mode 0600)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.keyFile == "" {
				return usagef("--key-file PATH is required (the repository.key of 'ferry keys generate')")
			}
			k, err := repokey.Install(o.stateDir, o.keyFile)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "installed the repository key %s in %s (fingerprint %s)\n",
				o.keyFile, repokey.Path(o.stateDir), k.Fingerprint())
			return nil
		},
	}
	install.Flags().StringVar(&o.keyFile, "key-file", "", "the repository private key file")
	remove := &cobra.Command{
		Use:   "remove [--state-dir DIR]",
		Short: "Delete the repository key from the state directory",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := repokey.Remove(o.stateDir); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "removed %s\n", repokey.Path(o.stateDir))
			return nil
		},
	}
	for _, sub := range []*cobra.Command{install, remove} {
		sub.Flags().StringVar(&o.stateDir, "state-dir", o.stateDir, "the agent's state directory")
		cmd.AddCommand(sub)
	}
	return cmd
}
