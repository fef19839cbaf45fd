package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const (
	auditBlock = 64 << 10 // the policy's default block size
	auditSize  = 4 << 20
	auditRate  = 1 << 20 // --audit-rate of the test's controller
)

// auditView is what the test reads of `machines show --json`.
type auditView struct {
	Health       string `json:"health"`
	HealthReason string `json:"health_reason"`
	Audit        struct {
		Pass struct {
			Running     bool       `json:"running"`
			LastStarted *time.Time `json:"last_started"`
			LastEnded   *time.Time `json:"last_ended"`
			LastError   string     `json:"last_error"`
			RateLimit   int64      `json:"rate_limit"`
		} `json:"pass"`
		Points []struct {
			PointID   int64      `json:"point_id"`
			AuditedAt *time.Time `json:"audited_at"`
			Damaged   bool       `json:"damaged"`
			Damage    []struct {
				Disk   string  `json:"disk"`
				Blocks []int64 `json:"blocks"`
				Error  string  `json:"error"`
			} `json:"damage"`
		} `json:"points"`
	} `json:"audit"`
}

func (v auditView) point(t *testing.T, id int64) (audited *time.Time, damaged bool, blocks map[string][]int64) {
	t.Helper()
	for _, p := range v.Audit.Points {
		if p.PointID == id {
			blocks = map[string][]int64{}
			for _, d := range p.Damage {
				blocks[d.Disk] = d.Blocks
			}
			return p.AuditedAt, p.Damaged, blocks
		}
	}
	t.Fatalf("machines show lists no audit of point %d", id)
	return nil, false, nil
}

// auditPassAfter waits for a background audit pass that started after t0
// to end, and returns the machine as it then shows.
func auditPassAfter(t *testing.T, c *Controller, machine string, t0 time.Time) auditView {
	t.Helper()
	var v auditView
	require.Eventually(t, func() bool {
		v = auditView{}
		c.JSON(&v, "machines", "show", machine)
		p := v.Audit.Pass
		return p.LastStarted != nil && p.LastStarted.After(t0) && p.LastEnded != nil && !p.LastEnded.Before(*p.LastStarted)
	}, 2*time.Minute, 200*time.Millisecond, "no audit pass started after %s ended", t0)
	require.Empty(t, v.Audit.Pass.LastError)
	return v
}

// flipStored flips one byte inside the repository's stored copy of a
// block whose content the test wrote (random, so stored as is): it finds
// a run of the block's bytes in the pack files.
func flipStored(t *testing.T, c *Controller, block []byte) {
	t.Helper()
	needle := block[auditBlock/2 : auditBlock/2+64]
	found := 0
	require.NoError(t, filepath.Walk(filepath.Join(c.Data, "repository"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || filepath.Ext(p) != ".pack" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for off := 0; ; {
			i := bytes.Index(b[off:], needle)
			if i < 0 {
				break
			}
			at := int64(off + i + 32)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteAt([]byte{b[at] ^ 0x20}, at)
			f.Close()
			if err != nil {
				return err
			}
			found++
			off += i + len(needle)
		}
		return nil
	}))
	require.Equal(t, 1, found, "the block's content is stored once")
}

// rewriteBlock gives block n of the image new random content (the
// source changed that block) and returns the whole image.
func rewriteBlock(t *testing.T, img string, n int64, seed uint64) []byte {
	t.Helper()
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := n * auditBlock; i < (n+1)*auditBlock; i++ {
		b[i] = byte(r.Uint32())
	}
	require.NoError(t, os.WriteFile(img, b, 0o600))
	return b
}

// auditImage writes an image of random bytes (stored as is: the test
// finds a block's content in the packs) and returns it.
func auditImage(t *testing.T, path string, seed uint64) []byte {
	t.Helper()
	b := make([]byte, auditSize)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return b
}

func auditBlockOf(img []byte, n int64) []byte { return img[n*auditBlock : (n+1)*auditBlock] }

// procIO reads rchar (bytes the process asked read() for, cache or not)
// and read_bytes (bytes its reads made the block layer fetch).
func procIO(t *testing.T, pid int) (rchar, readBytes int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "read_bytes":
			readBytes = n
		}
	}
	return rchar, readBytes
}

// dropPackCache evicts the pack files from the page cache, so the audit's
// next reads reach the disk and show in read_bytes.
func dropPackCache(t *testing.T, c *Controller) {
	filepath.Walk(filepath.Join(c.Data, "repository"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && filepath.Ext(p) == ".pack" {
			if f, err := os.Open(p); err == nil {
				unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				f.Close()
			}
		}
		return nil
	})
}

// TestPointAuditFindsRepairsAndMarksDamage is issue 17's audit acceptance.
// The controller audits in the background at 1 MiB/s, each point again a
// second after its last audit. Its read rate, measured outside the
// process (/proc/PID/io), stays within the limit. A byte flipped in a pack
// is found by the first pass that starts after it, which names the point,
// the disk and the block (machines show, the health reason, the log); the
// next cycle repairs it and both points export byte-exact again. A second
// flip, in a block only the second point reads and that the source then
// rewrites, cannot be repaired: that point stays damaged, latest skips
// it, and failover refuses it without --allow-damaged.
func TestPointAuditFindsRepairsAndMarksDamage(t *testing.T) {
	c := StartController(t, "--audit-rate", "1MiB", "--audit-every", "1s")
	a := EnrollAgent(t, c, c.Addr, "src")
	site := AddSite(t, c, c.Addr, "dr")
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	img := filepath.Join(t.TempDir(), "m.img")
	v1 := auditImage(t, img, 171)
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
	p1 := c.WaitPoint("m", 0, 2*time.Minute)
	site.waitStaged(t, "m", p1.ID)
	a.Proc.Stop()

	// The read rate, measured outside the process while passes run back
	// to back (a pass of 4 MiB takes 4 s; each point is due again a second
	// after its last audit), the pack files first evicted from the page
	// cache so the first pass's reads reach the disk.
	auditPassAfter(t, c, "m", time.Now()) // a whole pass is on record
	pid := c.Proc.cmd.Process.Pid
	dropPackCache(t, c)
	r0, d0 := procIO(t, pid)
	begin := time.Now()
	time.Sleep(10 * time.Second)
	r1, d1 := procIO(t, pid)
	secs := time.Since(begin).Seconds()
	rate, disk := float64(r1-r0)/secs, float64(d1-d0)/secs
	t.Logf("audit read rate over %.1fs: %.0f B/s read() (rchar), %.0f B/s from disk (read_bytes); limit %d B/s", secs, rate, disk, auditRate)
	require.LessOrEqual(t, rate, auditRate*1.1, "the audit holds its limit")
	require.Greater(t, rate, auditRate*0.6, "the audit reads near its limit (passes 4 s, idle 1 s)")

	// Repairable: block 9 damaged while the source still has it.
	const x = 9
	t0 := time.Now()
	flipStored(t, c, auditBlockOf(v1, x))
	v := auditPassAfter(t, c, "m", t0)
	at, damaged, blocks := v.point(t, p1.ID)
	require.True(t, at.After(t0))
	require.True(t, damaged)
	require.Equal(t, map[string][]int64{"d": {x}}, blocks, "point, disk and block are named")
	require.Equal(t, "degraded", v.Health)
	require.Contains(t, v.HealthReason, fmt.Sprintf("point %d disk d block %d", p1.ID, x))
	require.Regexp(t, fmt.Sprintf(`msg="point audit: damaged data".* machine=m point=%d disk=d blocks="?\[%d\]`, p1.ID, x), c.Proc.Output(), "the log names them")
	r := c.Ferry("points", "export", "m", "--point", "latest", "--out", t.TempDir())
	require.NotEqual(t, 0, r.Code, "latest skips the only point, damaged: %s", r.Stdout)

	// The source also changes block 20 before its next cycle: the second
	// point reads content only it has.
	const z = 20
	v2 := rewriteBlock(t, img, z, 172)
	a.Start()
	p2 := c.WaitPoint("m", p1.ID, 2*time.Minute)
	site.waitStaged(t, "m", p2.ID)
	a.Proc.Stop()
	var pts []struct {
		ID      int64 `json:"id"`
		Damaged bool  `json:"damaged"`
	}
	c.JSON(&pts, "points", "list", "m")
	require.Len(t, pts, 2)
	for _, p := range pts {
		require.False(t, p.Damaged, "point %d is whole again: the cycle stored block %d again", p.ID, x)
	}
	c.MustFerry("points", "audit", "m")
	requireAuditExport(t, c, p1.ID, v1)
	requireAuditExport(t, c, p2.ID, v2)

	// Unrepairable: block 20's content of the second point is damaged and
	// the source rewrites that block before its next cycle.
	t0 = time.Now()
	flipStored(t, c, auditBlockOf(v2, z))
	v = auditPassAfter(t, c, "m", t0)
	_, damaged, blocks = v.point(t, p2.ID)
	require.True(t, damaged)
	require.Equal(t, map[string][]int64{"d": {z}}, blocks)
	_, damaged, _ = v.point(t, p1.ID)
	require.False(t, damaged, "the first point reads block 20's old content")
	dir := t.TempDir()
	c.MustFerry("points", "export", "m", "--point", "latest", "--out", dir)
	got, err := os.ReadFile(filepath.Join(dir, "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(v1, got), "latest skips the damaged newest point for the first")

	v3 := rewriteBlock(t, img, z, 173)
	a.Start()
	p3 := c.WaitPoint("m", p2.ID, 2*time.Minute)
	site.waitStaged(t, "m", p3.ID)
	a.Proc.Stop()
	r = c.Ferry("points", "audit", "m", "--rate", "64MiB")
	require.NotEqual(t, 0, r.Code, "the damage is still there: %s", r.Stdout)
	require.Contains(t, r.Stdout, fmt.Sprintf("machine m point %d disk d blocks [%d]", p2.ID, z))
	v = auditView{}
	c.JSON(&v, "machines", "show", "m")
	_, damaged, _ = v.point(t, p2.ID)
	require.True(t, damaged, "the source no longer has the content: the point stays damaged")
	_, damaged, _ = v.point(t, p3.ID)
	require.False(t, damaged)
	require.Contains(t, c.MustFerry("machines", "show", "m"), "damaged")
	requireAuditExport(t, c, p3.ID, v3)

	// (--allow-inconsistent: a point of a plain image file may be a direct
	// read, inconsistent; the refusal here must be the damage.)
	r = c.Ferry("failover", "m", "--point", strconv.FormatInt(p2.ID, 10), "--dry-run", "--allow-inconsistent")
	require.NotEqual(t, 0, r.Code, "a damaged point is refused: %s", r.Stdout)
	require.Contains(t, r.Stdout+r.Stderr, "--allow-damaged")
	r = c.Ferry("failover", "m", "--point", strconv.FormatInt(p2.ID, 10), "--dry-run", "--allow-inconsistent", "--allow-damaged")
	require.Equal(t, 0, r.Code, "accepted with --allow-damaged: %s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stdout, fmt.Sprintf("point %d", p2.ID))
}

func requireAuditExport(t *testing.T, c *Controller, id int64, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(c.Export("m", id), "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "point %d exports byte-exact", id)
}
