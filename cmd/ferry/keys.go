package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/storage"
)

func newKeysCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Repository encryption keys"}
	var out string
	gen := &cobra.Command{
		Use:   "generate --out DIR",
		Short: "Make a key pair for an encrypted repository (ferry serve --public-key DIR/repository.pub)",
		Long: `Generate an X25519 key pair for envelope encryption at rest. The controller
holds only the public key (ferry serve --public-key, when the repository is
created): it can store and verify data but not read it. Keep the private key
off the controller; give it to exports and failovers with --key-file.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out DIR is required")
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			priv, pub := filepath.Join(out, "repository.key"), filepath.Join(out, "repository.pub")
			for _, p := range []string{priv, pub} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists: not overwriting a key", p)
				}
			}
			k, err := storage.GenerateKey()
			if err != nil {
				return err
			}
			if err := k.WritePrivateKeyFile(priv); err != nil {
				return err
			}
			if err := k.Public().WritePublicKeyFile(pub); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{"private_key": priv, "public_key": pub, "fingerprint": k.Public().Fingerprint()})
			}
			fmt.Fprintf(g.stdout, "private key %s (keep it off the controller)\npublic key  %s (fingerprint %s)\n", priv, pub, k.Public().Fingerprint())
			return nil
		},
	}
	gen.Flags().StringVar(&out, "out", "", "directory for repository.key and repository.pub")
	cmd.AddCommand(gen)
	return cmd
}
