package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ferrydr/ferry/internal/workload"
)

// manyLayout is where the many-machines case keeps its images: whether
// each agent (a host) has an XFS filesystem of its own or all share the
// bench's, and whether the images are reflink clones of one image or each
// written on its own (the same bytes either way, so the controller sees
// the same data).
//
// The layout decides more of the RPO tail than Ferry does. Every 5 s each
// agent clones each image for its view while a writer writes it; each
// clone, each dropped clone and each copy-on-write allocates blocks or
// changes reference counts, which XFS does under locked metadata buffers,
// and the clone holds the file's lock meanwhile. Fifty busy images and five
// agents on one filesystem queue there, whether the images share extents
// or not (docs/benchmarks.md, "Where the images live"). Five hosts do not
// share one filesystem: "hosts" is the default, and the others are kept
// to compare with.
type manyLayout struct {
	perAgentFS bool // one XFS loop mount per agent
	clones     bool // reflink clones of one image, per filesystem
	what       string
}

var manyLayouts = map[string]manyLayout{
	"hosts":         {perAgentFS: true, what: "each agent's images on an XFS filesystem of its own (a loop mount per agent, as five hosts have), each image written on its own"},
	"hosts-clones":  {perAgentFS: true, clones: true, what: "each agent's images on an XFS filesystem of its own, reflink clones of one image written there"},
	"shared":        {what: "every image on the bench's one XFS filesystem, each written on its own"},
	"shared-clones": {clones: true, what: "every image on the bench's one XFS filesystem, reflink clones of one image (the layout before 2026-12-06)"},
}

func manyLayoutNames() string {
	names := make([]string, 0, len(manyLayouts))
	for n := range manyLayouts {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// manyImagesPerAgentFS is the loop mount's size per image of its agent:
// the image, its view clone and the copy-on-write a minute of churn makes.
const manyImagesPerAgentFS = 4

// manyImages makes the case's images under dir (and, per layout, on
// filesystems of their own) and returns their paths, machine i's at index
// i (on agent i mod ManyAgents), and a function that removes what it made.
func (b *bench) manyImages(ctx context.Context, dir string) (imgs []string, cleanup func(), err error) {
	layout := manyLayouts[b.cfg.ManyLayout]
	var mounts []*loopMount
	cleanup = func() {
		for _, m := range mounts {
			if err := m.close(context.WithoutCancel(ctx)); err != nil {
				b.log.Warn("many machines: removing an agent's filesystem", "mount", m.Dir, "err", err)
			}
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	homes := []string{dir}
	if layout.perAgentFS {
		homes = homes[:0]
		perAgent := (b.cfg.ManyMachines + b.cfg.ManyAgents - 1) / b.cfg.ManyAgents
		size := max(int64(perAgent*manyImagesPerAgentFS)*b.cfg.ManyDiskSize, 1<<30)
		for k := range b.cfg.ManyAgents {
			name := fmt.Sprintf("many-host-%d", k+1)
			m, err := makeLoopMount(ctx, "xfs", filepath.Join(b.work, name+".img"), filepath.Join(b.work, "mnt", name), size)
			if err != nil {
				return nil, cleanup, fmt.Errorf("the filesystem of agent %d: %w", k+1, err)
			}
			mounts = append(mounts, m)
			homes = append(homes, m.Dir)
		}
	}
	bases := map[string]string{}
	imgs = make([]string, b.cfg.ManyMachines)
	for i := range imgs {
		home := homes[(i%b.cfg.ManyAgents)%len(homes)]
		imgs[i] = filepath.Join(home, manyMachineName(i)+".img")
		if !layout.clones {
			if err := workload.WriteImage(imgs[i], b.cfg.Seed, b.cfg.ManyDiskSize); err != nil {
				return nil, cleanup, fmt.Errorf("generate %s: %w", imgs[i], err)
			}
			continue
		}
		base, ok := bases[home]
		if !ok {
			base = filepath.Join(home, "base.img")
			if err := workload.WriteImage(base, b.cfg.Seed, b.cfg.ManyDiskSize); err != nil {
				return nil, cleanup, fmt.Errorf("generate the small image: %w", err)
			}
			bases[home] = base
		}
		if err := reflinkCopy(base, imgs[i]); err != nil {
			return nil, cleanup, err
		}
	}
	return imgs, cleanup, nil
}
