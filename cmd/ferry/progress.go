package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/ferrydr/ferry/controller/api"
)

// progressOut shows how far something that moves bytes got: on a terminal
// one bar redrawn in place (a carriage return, then the line); elsewhere
// (a pipe, a file, a CI log) plain lines, one each time the work crosses a
// tenth of its total or changes what it does, so a log stays short.
//
// Hand-written rather than a progress library: the commands draw one bar
// at a time from snapshots the controller sends (no goroutine, no
// terminal takeover), which is a few lines of formatting.
type progressOut struct {
	w     io.Writer
	tty   bool
	width int
	now   func() time.Time

	drawn     bool   // a bar is on the current line
	lastLabel string // plain mode: what the last line said, and its tenth
	lastTenth int64
}

// barWidth is the bar's widest, in characters.
const barWidth = 30

func newProgressOut(w io.Writer) *progressOut {
	p := &progressOut{w: w, width: 80, now: time.Now, lastTenth: -1}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			p.width = cols
		}
	}
	return p
}

// progress is one snapshot of the work.
type progress struct {
	label       string
	done, total int64
	rate        int64    // bytes per second (0: unknown)
	eta         *float64 // seconds left (nil: unknown)
}

// fromReplication is a machine's live replication progress.
func fromReplication(label string, p *api.ReplicationProgress) progress {
	return progress{label: label, done: p.BytesDone, total: p.BytesTotal, rate: p.RateBPS, eta: p.ETASeconds}
}

// fromStep is a job step's progress; the rate is the step's average so far
// and the time left follows from it. now is this host's clock against the
// controller's start time: a skewed clock skews the estimate, never the
// bytes.
func fromStep(label string, s api.JobStep, now time.Time) progress {
	p := progress{label: label, done: s.BytesDone, total: s.BytesTotal}
	if secs := now.Sub(s.Started).Seconds(); !s.Started.IsZero() && secs >= 1 && s.BytesDone > 0 {
		p.rate = int64(float64(s.BytesDone) / secs)
		eta := float64(s.BytesTotal-s.BytesDone) / (float64(s.BytesDone) / secs)
		p.eta = &eta
	}
	return p
}

// update shows a snapshot: redraws the bar, or prints a plain line when
// the work crossed a tenth of its total or its label changed.
func (o *progressOut) update(p progress) {
	if o.tty {
		line := o.barLine(p)
		fmt.Fprintf(o.w, "\r%s\x1b[K", line)
		o.drawn = true
		return
	}
	tenth := int64(0)
	if p.total > 0 {
		tenth = min(10, 10*p.done/p.total)
	}
	if p.label == o.lastLabel && tenth == o.lastTenth {
		return
	}
	o.lastLabel, o.lastTenth = p.label, tenth
	fmt.Fprintln(o.w, plainLine(p))
}

// step shows a job step that moves data: its progress while it runs, and
// once it succeeded, if its progress was shown (wasShown), the full bar.
// It reports whether it showed anything.
func (o *progressOut) step(label string, s api.JobStep, wasShown bool) bool {
	switch {
	case s.State == api.StepRunning && s.BytesTotal > 0:
		o.update(fromStep(label, s, o.now()))
		return true
	case s.State == api.StepSucceeded && wasShown && s.BytesTotal > 0:
		o.update(progress{label: label, done: s.BytesTotal, total: s.BytesTotal})
		o.finish()
	}
	return false
}

// println ends a bar on the line (it stays, as last drawn) and prints a
// line of text.
func (o *progressOut) println(format string, args ...any) {
	o.finish()
	fmt.Fprintf(o.w, format+"\n", args...)
}

// finish moves past a bar so that what follows starts on its own line.
func (o *progressOut) finish() {
	if o.drawn {
		fmt.Fprintln(o.w)
		o.drawn = false
	}
}

// barLine is "LABEL [=====>      ]  42%  860MiB of 2GiB  80MiB/s  ETA 12s":
// the bar gives up width (down to 10) for the figures on a narrow
// terminal, and the line is cut to the terminal's width.
func (o *progressOut) barLine(p progress) string {
	frac := fraction(p)
	tail := fmt.Sprintf("] %3.0f%%  %s", 100*frac, details(p))
	w := min(barWidth, max(10, o.width-1-len([]rune(p.label))-2-len([]rune(tail))))
	fill := int(frac * float64(w))
	bar := strings.Repeat("=", fill)
	if fill < w {
		bar += ">" + strings.Repeat(" ", w-fill-1)
	}
	line := p.label + " [" + bar + tail
	if r := []rune(line); len(r) > o.width-1 {
		line = string(r[:o.width-1])
	}
	return line
}

// plainLine is "LABEL  42% (860MiB of 2GiB, 80MiB/s, ETA 12s)".
func plainLine(p progress) string {
	return fmt.Sprintf("%s %3.0f%% (%s)", p.label, 100*fraction(p), strings.ReplaceAll(details(p), "  ", ", "))
}

func fraction(p progress) float64 {
	if p.total <= 0 {
		return 0
	}
	return min(1, max(0, float64(p.done)/float64(p.total)))
}

// details is "860MiB of 2GiB  80MiB/s  ETA 12s", leaving out what is
// unknown.
func details(p progress) string {
	parts := []string{api.FormatSize(p.done) + " of " + api.FormatSize(p.total)}
	if p.rate > 0 {
		parts = append(parts, api.FormatSize(p.rate)+"/s")
	}
	if p.eta != nil && p.done < p.total {
		parts = append(parts, "ETA "+fmtETA(*p.eta))
	}
	return strings.Join(parts, "  ")
}

// fmtETA rounds the time left to what a person reads: to the second under
// an hour, to the minute above.
func fmtETA(secs float64) string {
	d := time.Duration(secs * float64(time.Second))
	if d < time.Hour {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

// fmtProgressShort is a machine's cycle for a table column: "42% ETA 12s"
// while it runs, "-" otherwise.
func fmtProgressShort(p *api.ReplicationProgress) string {
	if !p.Active() {
		return "-"
	}
	out := fmt.Sprintf("%s %.0f%%", p.Phase, 100*fraction(fromReplication("", p)))
	if p.ETASeconds != nil {
		out += " ETA " + fmtETA(*p.ETASeconds)
	}
	return out
}

// fmtProgressLong is a machine's running or last cycle for `machines
// show`: "shipping 42% (860MiB of 2GiB, 80MiB/s, ETA 12s)", or
// "idle: the last cycle compared 2GiB at 80MiB/s".
func fmtProgressLong(p *api.ReplicationProgress) string {
	if p.Active() {
		return plainLine(fromReplication(p.Phase, p))
	}
	if p.BytesTotal == 0 {
		return p.Phase + ": the last cycle found no changed block to compare"
	}
	out := fmt.Sprintf("%s: the last cycle compared %s of %s", p.Phase, api.FormatSize(p.BytesDone), api.FormatSize(p.BytesTotal))
	if p.RateBPS > 0 {
		out += " at " + api.FormatSize(p.RateBPS) + "/s"
	}
	return out
}
