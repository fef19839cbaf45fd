package libvirt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/ferrydr/ferry/agent/driver"
)

// SeedLabel is the volume label cloud-init's NoCloud datasource looks for.
const SeedLabel = "cidata"

// seedSize bounds the seed image while it is built (the finished ISO is a
// few hundred KiB at most).
const seedSize = 4 << 20

// NoCloud is the content of a cloud-init NoCloud seed.
type NoCloud struct {
	MetaData      string
	UserData      string
	NetworkConfig string
}

// SeedFor is the NoCloud seed for spec's NICs with an address under domain
// name; ok is false when no NIC has one (then no seed is attached).
func SeedFor(name string, spec driver.Spec) (NoCloud, bool, error) {
	var b strings.Builder
	b.WriteString("version: 2\nethernets:\n")
	any := false
	for i, n := range spec.NICs {
		if n.Address == "" {
			if n.Gateway != "" {
				return NoCloud{}, false, invalid(driver.ActionStart, "nic %s: gateway %q without an address", n.Name, n.Gateway)
			}
			continue
		}
		p, err := netip.ParsePrefix(n.Address)
		if err != nil {
			return NoCloud{}, false, invalid(driver.ActionStart, "nic %s: address %q: want ADDR/PREFIX: %w", n.Name, n.Address, err)
		}
		fmt.Fprintf(&b, "  nic%d:\n    match:\n      macaddress: %q\n    addresses:\n      - %q\n", i, macFor(name, i, n, spec.NewMACs), p.String())
		if n.Gateway != "" {
			g, err := netip.ParseAddr(n.Gateway)
			if err != nil {
				return NoCloud{}, false, invalid(driver.ActionStart, "nic %s: gateway %q: %w", n.Name, n.Gateway, err)
			}
			def := "0.0.0.0/0"
			if g.Is6() {
				def = "::/0"
			}
			fmt.Fprintf(&b, "    routes:\n      - to: %q\n        via: %q\n", def, g.String())
		}
		any = true
	}
	if !any {
		return NoCloud{}, false, nil
	}
	host := spec.Machine
	if host == "" {
		host = name
	}
	return NoCloud{
		MetaData:      fmt.Sprintf("instance-id: ferry-%s\nlocal-hostname: %q\n", name, host),
		UserData:      "#cloud-config\n{}\n",
		NetworkConfig: b.String(),
	}, true, nil
}

// seedPath is where the seed of domain name goes: the seed-dir option, else
// the first disk's directory ("" when neither is known).
func (d *Driver) seedPath(name string, spec driver.Spec) string {
	dir := d.opts.SeedDir
	if dir == "" && len(spec.Disks) > 0 && filepath.IsAbs(spec.Disks[0].Path) {
		dir = filepath.Dir(spec.Disks[0].Path)
	}
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name+"-cidata.iso")
}

// writeSeed writes spec's NoCloud seed for domain name and returns its path,
// or "" when spec needs none (a stale seed from an earlier start is removed).
func (d *Driver) writeSeed(name string, spec driver.Spec) (string, error) {
	nc, ok, err := SeedFor(name, spec)
	if err != nil {
		return "", err
	}
	p := d.seedPath(name, spec)
	if !ok {
		if p != "" {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("remove stale seed: %w", err)
			}
		}
		return "", nil
	}
	if p == "" {
		return "", invalid(driver.ActionStart, "no directory for the NoCloud seed: set seed-dir")
	}
	if err := WriteSeed(p, nc); err != nil {
		return "", err
	}
	return p, nil
}

// WriteSeed writes nc as an ISO9660 image (Rock Ridge names, volume label
// cidata) at path, replacing it atomically.
func WriteSeed(path string, nc NoCloud) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	ws, err := os.MkdirTemp(filepath.Dir(path), ".ferry-seed-")
	if err != nil {
		return fmt.Errorf("seed workspace: %w", err)
	}
	defer os.RemoveAll(ws)
	if err := buildSeed(tmp, ws, nc); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := trimISO(tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

func buildSeed(path, workspace string, nc NoCloud) error {
	b, err := file.CreateFromPath(path, seedSize)
	if err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	defer b.Close()
	fs, err := iso9660.Create(b, 0, 0, 2048, workspace)
	if err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	for _, f := range []struct{ name, body string }{
		{"meta-data", nc.MetaData}, {"user-data", nc.UserData}, {"network-config", nc.NetworkConfig},
	} {
		w, err := fs.OpenFile("/"+f.name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("seed %s: %w", f.name, err)
		}
		if _, err := w.Write([]byte(f.body)); err != nil {
			return fmt.Errorf("seed %s: %w", f.name, err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("seed %s: %w", f.name, err)
		}
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: SeedLabel}); err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	return nil
}

// ReadSeed reads the NoCloud files back from a seed image (tests, diagnosis).
func ReadSeed(path string) (NoCloud, error) {
	b, err := file.OpenFromPath(path, true)
	if err != nil {
		return NoCloud{}, fmt.Errorf("seed %s: %w", path, err)
	}
	defer b.Close()
	st, err := os.Stat(path)
	if err != nil {
		return NoCloud{}, err
	}
	fs, err := iso9660.Read(b, st.Size(), 0, 2048)
	if err != nil {
		return NoCloud{}, fmt.Errorf("seed %s: %w", path, err)
	}
	var nc NoCloud
	for name, dst := range map[string]*string{"meta-data": &nc.MetaData, "user-data": &nc.UserData, "network-config": &nc.NetworkConfig} {
		data, err := fs.ReadFile(name)
		if err != nil {
			return NoCloud{}, fmt.Errorf("seed %s: %s: %w", path, name, err)
		}
		*dst = string(data)
	}
	if l := strings.Trim(fs.Label(), " \x00"); l != SeedLabel {
		return NoCloud{}, fmt.Errorf("seed %s: volume label %q, want %q", path, l, SeedLabel)
	}
	return nc, nil
}

// trimISO cuts the image to its volume space size (primary volume
// descriptor, ECMA-119 8.4.8: a both-endian block count at byte 80 of the
// descriptor in sector 16), since it was created at seedSize.
func trimISO(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], 16*2048+80); err != nil {
		return fmt.Errorf("seed: read volume size: %w", err)
	}
	blocks := int64(binary.LittleEndian.Uint32(b[:]))
	if blocks <= 16 || blocks*2048 > seedSize {
		return fmt.Errorf("seed: volume size %d blocks is out of range", blocks)
	}
	if err := f.Truncate(blocks * 2048); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return f.Sync()
}
