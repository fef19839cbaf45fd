package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuTimes is the machine's CPU time so far, summed over its cores, by
// what the cores did (/proc/stat's "cpu" line): busy (user, nice, system,
// irq, softirq and steal), idle, and iowait (idle while a disk request
// of that core was outstanding).
type cpuTimes struct{ busy, idle, iowait time.Duration }

// machineCPU reads the machine's CPU times so far.
func machineCPU() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseProcStat(string(b))
}

// parseProcStat reads the "cpu" line of /proc/stat's text.
func parseProcStat(text string) (cpuTimes, error) {
	line, _, _ := strings.Cut(text, "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: first line %q is not the cpu line", line)
	}
	var ticks [8]int64 // user nice system idle iowait irq softirq steal
	for i := range ticks {
		n, err := strconv.ParseInt(fs[i+1], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
		}
		ticks[i] = n
	}
	d := func(t int64) time.Duration { return time.Duration(t) * time.Second / userHZ }
	return cpuTimes{
		busy:   d(ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]),
		idle:   d(ticks[3]),
		iowait: d(ticks[4]),
	}, nil
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{busy: c.busy - o.busy, idle: c.idle - o.idle, iowait: c.iowait - o.iowait}
}

func (c cpuTimes) add(o cpuTimes) cpuTimes {
	return cpuTimes{busy: c.busy + o.busy, idle: c.idle + o.idle, iowait: c.iowait + o.iowait}
}

func (c cpuTimes) total() time.Duration { return c.busy + c.idle + c.iowait }

// account splits the machine's core-seconds of a phase: Ferry's two
// processes (ferry), this bench process (bench: the counting proxy, and
// the churn writer where there is one), everything else that ran (kernel
// writeback and loopback workers, other processes), and idle, with how
// much of the idle time waited on the disk.
func (c cpuTimes) account(ferry, bench time.Duration) string {
	rest := max(c.busy-ferry-bench, 0)
	return fmt.Sprintf("machine-wide %.2f of %d cores busy (%.2f of %.2f core-seconds: Ferry %.2f, this bench's proxy and writers %.2f, kernel and other processes %.2f), idle %.2f core-seconds, %.2f of them waiting on disk I/O",
		float64(runtime.NumCPU())*c.busy.Seconds()/c.total().Seconds(), runtime.NumCPU(),
		c.busy.Seconds(), c.total().Seconds(), ferry.Seconds(), bench.Seconds(), rest.Seconds(),
		(c.idle + c.iowait).Seconds(), c.iowait.Seconds())
}
