package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/storage"
)

func newPointsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "points", Short: "Recovery points: list, export, label"}
	list := &cobra.Command{
		Use: "list MACHINE", Short: "List a machine's recovery points (id, time, consistency, bytes, name, method)", Args: exactArgs(1, "MACHINE"),
		Long: `List a machine's recovery points: id, time (controller clock), consistency,
bytes, name, whether the point audit found it damaged, whether a drill
verified it, and the method that made its view ("-" for a point made before
methods were recorded). Below the table, why the inconsistent points are.

Methods (docs/replication.md §5.2 has the table of sources and tests):
  reflink                      a reflink clone of the image file
  reflink-per-disk             several disks cloned one after another, not
                               frozen together: inconsistent, says why
  btrfs-snapshot               a btrfs snapshot of the images' subvolume
  driver-pause+reflink,
  driver-pause+btrfs-snapshot  the hypervisor paused the VM for the clone
  tracked-freeze               filesystems frozen, the blocks a write tracker
                               saw change read (image files on one
                               filesystem, or whole block devices)
  driver-pause+tracked         block devices with no mounted filesystem:
                               the machine paused by its source driver,
                               the blocks a write tracker saw change read
  quiet-file                   image files read directly, unchanged while
                               read (judged by their change timestamps)
  powered-off                  the VM was off while read
  direct-read                  read while in use: inconsistent, says why

With --json each point has id, time, consistency, bytes, name,
changed_blocks, damaged and verified (when true), method and reason (the
view's notes; for an inconsistent point, why it is inconsistent).`,
		RunE: func(c *cobra.Command, args []string) error { return runPointsList(c.Context(), g, args[0]) },
	}
	var ex exportOptions
	export := &cobra.Command{
		Use:   "export MACHINE --point SPEC --out DIR",
		Short: "Write each disk of a point as a sparse raw file DIR/<disk>.raw",
		Long: `Export a recovery point: each disk becomes DIR/<disk-name>.raw, a sparse raw
image of the disk as the guest saw it at the point. SPEC is latest (default),
latest-processed, latest-app-consistent, a point id, or an RFC 3339 time (the
newest point at or before it).

The disks are decrypted plaintext: a directory the export creates is 0700 and
each disk file is 0600 (whatever the umask), so only the exporting user can
read them. A directory that already exists keeps its own mode.`,
		Args: exactArgs(1, "MACHINE"),
		RunE: func(c *cobra.Command, args []string) error { return runPointsExport(c.Context(), g, args[0], ex) },
	}
	export.Flags().StringVar(&ex.point, "point", "latest", "which point (see above)")
	export.Flags().StringVar(&ex.out, "out", "", "directory to write the disks into (created 0700 if missing; files are 0600)")
	export.Flags().StringVar(&ex.keyFile, "key-file", "", "the repository's private key file (encrypted repositories)")
	var lp string
	label := &cobra.Command{
		Use: "label MACHINE --point SPEC NAME", Short: "Name a recovery point", Args: exactArgs(2, "MACHINE NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			p, err := cl.LabelPoint(c.Context(), args[0], api.LabelRequest{Point: lp, Name: args[1]})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(p)
			}
			fmt.Fprintf(g.stdout, "point %d is now named %q\n", p.ID, p.Name)
			return nil
		},
	}
	label.Flags().StringVar(&lp, "point", "", "which point")
	cmd.AddCommand(list, export, label, newPointsAuditCommand(g))
	return cmd
}

func runPointsList(ctx context.Context, g *globals, machine string) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ps, err := cl.Points(ctx, machine)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(ps)
	}
	var rows [][]string
	for _, p := range ps {
		state := "ok"
		if p.Damaged {
			state = "damaged"
		}
		verified := "-"
		if p.Verified {
			verified = "verified"
		}
		rows = append(rows, []string{strconv.FormatInt(p.ID, 10), fmtTime(p.Time), p.Consistency, api.FormatSize(p.Bytes), orDash(p.Name), state, verified, orDash(p.Method)})
	}
	table(g.stdout, []string{"ID", "TIME", "CONSISTENCY", "BYTES", "NAME", "STATE", "DRILL", "METHOD"}, rows)
	printInconsistentReasons(g.stdout, ps)
	return nil
}

// printInconsistentReasons says, below the table, why the inconsistent
// points are: one line per reason, with the points that share it.
func printInconsistentReasons(w io.Writer, ps []api.Point) {
	var reasons []string
	ids := map[string][]string{}
	for _, p := range ps {
		if p.Consistency != string(storage.Inconsistent) || p.Reason == "" {
			continue
		}
		if ids[p.Reason] == nil {
			reasons = append(reasons, p.Reason)
		}
		ids[p.Reason] = append(ids[p.Reason], strconv.FormatInt(p.ID, 10))
	}
	if len(reasons) > 0 {
		fmt.Fprintln(w)
	}
	for _, r := range reasons {
		what := "point " + ids[r][0] + " is"
		if n := len(ids[r]); n > 1 {
			what = "points " + strings.Join(ids[r], ", ") + " are"
		}
		fmt.Fprintf(w, "%s inconsistent: %s\n", what, r)
	}
}

type exportOptions struct {
	point, out, keyFile string
}

func runPointsExport(ctx context.Context, g *globals, machine string, o exportOptions) error {
	if o.out == "" {
		return usagef("--out DIR is required")
	}
	var key []byte
	if o.keyFile != "" {
		var err error
		if key, err = os.ReadFile(o.keyFile); err != nil {
			return fmt.Errorf("--key-file: %w", err)
		}
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	man, err := cl.ExportManifest(ctx, machine, o.point, key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o700); err != nil {
		return err
	}
	type written struct {
		Disk string `json:"disk"`
		Path string `json:"path"`
		Size int64  `json:"size"`
	}
	var out []written
	for _, d := range man.Disks {
		path := filepath.Join(o.out, d.Name+".raw")
		size, err := exportDisk(ctx, cl, machine, man.Point.ID, d.Name, key, path)
		if err != nil {
			return fmt.Errorf("export disk %s: %w", d.Name, err)
		}
		out = append(out, written{Disk: d.Name, Path: path, Size: size})
		if !g.json {
			fmt.Fprintf(g.stdout, "%s: %s (%s)\n", d.Name, path, api.FormatSize(size))
		}
	}
	if err := fsutil.SyncDir(o.out); err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"point": man.Point, "disks": out})
	}
	fmt.Fprintf(g.stdout, "exported point %d (%s, %s)\n", man.Point.ID, fmtTime(man.Point.Time), man.Point.Consistency)
	return nil
}

// exportDisk writes one disk to a temporary file, fsyncs it and renames it
// into place, so a cut export never leaves a file that looks complete.
func exportDisk(ctx context.Context, cl *admin.Client, machine string, point int64, disk string, key []byte, path string) (int64, error) {
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp)
	// A leftover .partial keeps its old mode through O_CREATE: set it.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return 0, err
	}
	size, err := cl.ExportDisk(ctx, machine, point, disk, key, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return size, os.Rename(tmp, path)
}
