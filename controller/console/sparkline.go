package console

import (
	"fmt"
	"html/template"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// sparkSamples is how many RPO samples a sparkline draws.
const sparkSamples = 60

// rpoHistory derives a machine's RPO over the window ending at now from
// its point times: at any instant the RPO is the age of the newest point
// taken by then. Deriving it needs no state of its own, survives restarts,
// and its last sample is the RPO the machine list reports. A sample before
// the first point is NaN (no RPO yet).
func rpoHistory(points []api.Point, now time.Time, window time.Duration, n int) []float64 {
	times := make([]time.Time, 0, len(points))
	for _, p := range points {
		times = append(times, p.Time)
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	out := make([]float64, n)
	for i := range out {
		at := now.Add(-window + time.Duration(i+1)*window/time.Duration(n))
		// The newest point at or before at.
		k := sort.Search(len(times), func(j int) bool { return times[j].After(at) }) - 1
		if k < 0 {
			out[i] = math.NaN()
			continue
		}
		out[i] = at.Sub(times[k]).Seconds()
	}
	return out
}

// sparkline draws the samples as a small inline SVG, with the policy's
// RPO threshold as a dashed line when it is in range; its title states the
// window and the highest RPO in it.
func sparkline(samples []float64, threshold float64, window time.Duration) template.HTML {
	const w, h = 120.0, 24.0
	top := threshold
	peak := 0.0
	for _, v := range samples {
		if !math.IsNaN(v) {
			peak = math.Max(peak, v)
		}
	}
	top = math.Max(top, peak)
	if top <= 0 {
		top = 1
	}
	var pts []string
	var lastX, lastY float64
	for i, v := range samples {
		if math.IsNaN(v) {
			continue
		}
		lastX = float64(i) * (w - 3) / float64(len(samples)-1)
		lastY = h - 2 - v/top*(h-4)
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", lastX, lastY))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="spark" width="%g" height="%g" viewBox="0 0 %g %g" role="img">`, w, h, w, h)
	fmt.Fprintf(&b, `<title>RPO over the last %s: highest %s</title>`, fmtDuration(window), fmtSeconds(peak))
	if threshold > 0 && threshold <= top {
		y := h - 2 - threshold/top*(h-4)
		fmt.Fprintf(&b, `<line class="threshold" x1="0" x2="%g" y1="%.1f" y2="%.1f"/>`, w, y, y)
	}
	if len(pts) > 0 {
		fmt.Fprintf(&b, `<polyline points="%s"/>`, strings.Join(pts, " "))
		// The newest sample, the RPO now: visible even when it is the only one.
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2"/>`, lastX, lastY)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built from numbers only
}

// fmtSeconds prints an RPO the way `ferry machines list` does.
func fmtSeconds(s float64) string {
	return fmtDuration(time.Duration(s * float64(time.Second)))
}

// fmtDuration rounds to what a person reads: 3h, 1h30m, 2m5s, 4.5s.
func fmtDuration(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return trimZeroUnits(d.Round(time.Minute).String())
	case d >= time.Minute:
		return trimZeroUnits(d.Round(time.Second).String())
	}
	return d.Round(100 * time.Millisecond).String()
}

// trimZeroUnits drops the trailing "0s" and "0m" of a duration's string.
func trimZeroUnits(s string) string {
	s = strings.TrimSuffix(s, "m0s")
	if strings.HasSuffix(s, "h0") {
		return strings.TrimSuffix(s, "0")
	}
	if !strings.ContainsAny(s[len(s)-1:], "hms") {
		s += "m"
	}
	return s
}
