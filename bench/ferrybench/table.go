package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// unit says how a row's figures print.
type unit int

const (
	unitSeconds unit = iota
	unitBytes        // decimal MB, as BENCHMARKS.md quotes rsync
	unitMemory       // MiB
	unitMillis       // seconds, printed in milliseconds (CPU time per cycle)
	unitTPS          // transactions per second
)

func (u unit) format(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	switch u {
	case unitBytes:
		return fmt.Sprintf("%.1f MB", v/1e6)
	case unitMemory:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case unitMillis:
		return fmt.Sprintf("%.1f ms", v*1000)
	case unitTPS:
		return fmt.Sprintf("%.0f tps", v)
	default:
		return fmt.Sprintf("%.2f s", v)
	}
}

// row is one line of the table. With an anchor the target bounds the
// median of the per-run ratios Ferry/anchor; without one it bounds Ferry's
// median itself (in the row's unit).
type row struct {
	Case       string
	Unit       unit
	Ferry      []float64 // one figure per run
	Anchor     []float64 // the anchor of the same runs; nil when there is none
	AnchorName string
	Target     float64
	TargetText string // e.g. "≤ 1.2 × zstd pipe"
	Note       string // shown under the table
	Pass       string // the profiled rerun that explains a MISS (see profile.go)
	// Info: a figure with no target (printed with its ratio, result
	// "info", never a MISS).
	Info bool
	// AtLeast: the target is a floor (a throughput kept), not a ceiling.
	AtLeast bool
}

func (r row) ferryMedian() float64  { return median(r.Ferry) }
func (r row) anchorMedian() float64 { return median(r.Anchor) }

// ratio is the median of the per-run ratios (NaN without an anchor).
func (r row) ratio() float64 {
	if r.Anchor == nil {
		return math.NaN()
	}
	return median(ratios(r.Ferry, r.Anchor))
}

// pass reports whether the row meets its target; a row without figures
// fails.
func (r row) pass() bool {
	if r.Info {
		return true
	}
	v := r.ferryMedian()
	if r.Anchor != nil {
		v = r.ratio()
	}
	if r.AtLeast {
		return !math.IsNaN(v) && v >= r.Target
	}
	return !math.IsNaN(v) && v <= r.Target
}

func (r row) result() string {
	if r.Info {
		return "info"
	}
	if r.pass() {
		return "PASS"
	}
	return "MISS"
}

// writeTable prints the rows as the markdown table of BENCHMARKS.md.
func writeTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| case | Ferry (median) | anchor (median) | ratio | target | result |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		anchor, ratio := "—", "—"
		if r.Anchor != nil {
			anchor = r.AnchorName + " " + r.Unit.format(r.anchorMedian())
			ratio = fmt.Sprintf("%.3f ×", r.ratio())
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.Case, r.Unit.format(r.ferryMedian()), anchor, ratio, r.TargetText, r.result())
	}
	var notes []string
	for _, r := range rows {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s", r.Case, r.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}

// runsText lists per-run figures: "9.81 s, 9.12 s, 10.02 s".
func runsText(u unit, xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = u.format(x)
	}
	return strings.Join(parts, ", ")
}
