package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// logLine is one line of a Ferry process's log (slog's text handler:
// key=value pairs, values quoted when they hold spaces).
type logLine map[string]string

// parseLogfmt splits a text-handler line into its pairs. A line that is not
// key=value (a panic, a plain print) yields nil.
func parseLogfmt(line string) logLine {
	out := logLine{}
	s := strings.TrimSpace(line)
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \t\"") {
			return nil
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := closingQuote(s)
			if end < 0 {
				return nil
			}
			v, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil
			}
			val, s = v, s[end+1:]
		} else {
			sp := strings.IndexByte(s, ' ')
			if sp < 0 {
				sp = len(s)
			}
			val, s = s[:sp], s[sp:]
		}
		out[key] = val
		s = strings.TrimLeft(s, " ")
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// closingQuote is the index of the quote that ends the string s starts
// with, honouring backslash escapes; -1 if there is none.
func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// Time is the line's time= attribute.
func (l logLine) Time() (time.Time, error) {
	return time.Parse(time.RFC3339Nano, l["time"])
}

// Int is an integer attribute (0 and an error when absent or malformed).
func (l logLine) Int(key string) (int64, error) {
	v, ok := l[key]
	if !ok {
		return 0, fmt.Errorf("no %s in log line", key)
	}
	return strconv.ParseInt(v, 10, 64)
}

// readLog returns the lines of a log file whose msg is one of msgs.
func readLog(path string, msgs ...string) ([]logLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l := parseLogfmt(sc.Text())
		if l == nil {
			continue
		}
		for _, m := range msgs {
			if l["msg"] == m {
				out = append(out, l)
				break
			}
		}
	}
	return out, sc.Err()
}

// cycleTimes pairs the controller's "cycle begins" and "point committed"
// lines of a machine: point id → time from the cycle's begin to the
// point's commit, as the controller logged them (millisecond resolution).
func cycleTimes(lines []logLine, machine string) map[int64]time.Duration {
	out := map[int64]time.Duration{}
	var begun time.Time
	for _, l := range lines {
		if l["machine"] != machine {
			continue
		}
		t, err := l.Time()
		if err != nil {
			continue
		}
		switch l["msg"] {
		case "cycle begins":
			begun = t
		case "point committed":
			id, err := l.Int("point")
			if err == nil && !begun.IsZero() {
				out[id] = t.Sub(begun)
			}
			begun = time.Time{}
		}
	}
	return out
}

// gcTrace summarises a Go process's GODEBUG=gctrace=1 lines ("gc 7 @1.2s
// 3%: …, 40->44->21 MB, 42 MB goal, …"): the heap at the start of a
// collection, at its end, and what survived it (the live heap).
type gcTrace struct {
	GCs                          int
	MaxStart, MaxLive, MaxGoalMB int64 // MB as the runtime prints them (2^20 bytes)
}

var gcLineRE = regexp.MustCompile(`^gc \d+ @[\d.]+s \d+%: .* (\d+)->(\d+)->(\d+) MB, (\d+) MB goal`)

// readGCTrace scans a log for gctrace lines.
func readGCTrace(path string) (gcTrace, error) {
	var g gcTrace
	f, err := os.Open(path)
	if err != nil {
		return g, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		m := gcLineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var v [4]int64
		for i := range v {
			v[i], _ = strconv.ParseInt(m[i+1], 10, 64)
		}
		g.GCs++
		g.MaxStart, g.MaxLive, g.MaxGoalMB = max(g.MaxStart, v[0]), max(g.MaxLive, v[2]), max(g.MaxGoalMB, v[3])
	}
	return g, sc.Err()
}
