package bdtrack

import "testing"

// TestMarkOverflow: an overflow counted from outside, through the pinned
// ctl map, is what the next Cut of the running tracker reports, once.
func TestMarkOverflow(t *testing.T) {
	opts := privateBPFFS(t)
	dev := loopDev(t, "", 16<<20)
	tr := openT(t, dev, 4*kib, opts)
	if d, err := tr.Cut(); err != nil || d.Overflow {
		t.Fatalf("first cut: overflow %v, %v", d.Overflow, err)
	}
	if err := MarkOverflow(dev, opts); err != nil {
		t.Fatal(err)
	}
	if d, err := tr.Cut(); err != nil || !d.Overflow {
		t.Fatalf("the cut after MarkOverflow: overflow %v, %v; want an overflow", d.Overflow, err)
	}
	if d, err := tr.Cut(); err != nil || d.Overflow {
		t.Fatalf("the cut after that: overflow %v, %v; want it cleared", d.Overflow, err)
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := MarkOverflow(dev, opts); err == nil {
		t.Fatal("MarkOverflow of an unpinned tracker: no error")
	}
}
