package ship

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrydr/ferry/protocol/data"
)

// CodecChoice is how a cycle chooses the codec of the blocks it sends.
type CodecChoice string

const (
	// CodecAuto (the default, also the zero value) starts each stream with
	// S2 when the controller offers it and switches between S2 and zstd on
	// what the stream measures (nextCodec).
	CodecAuto CodecChoice = "auto"
	// CodecZstd, CodecS2 and CodecNone fix the codec, for benchmarks and
	// tests. S2 falls back to zstd when the controller does not offer it.
	CodecZstd CodecChoice = "zstd"
	CodecS2   CodecChoice = "s2"
	CodecNone CodecChoice = "none"
)

// ParseCodecChoice parses "auto", "zstd", "s2" or "none" ("" is auto).
func ParseCodecChoice(s string) (CodecChoice, error) {
	switch c := CodecChoice(s); c {
	case "":
		return CodecAuto, nil
	case CodecAuto, CodecZstd, CodecS2, CodecNone:
		return c, nil
	}
	return "", fmt.Errorf("wire codec %q: want auto, zstd, s2 or none", s)
}

// CodecBytes counts block data bytes sent, by the codec they travelled in.
type CodecBytes struct{ None, Zstd, S2 int64 }

// codecName names a wire codec as logs and Result say it.
func codecName(codec uint8) string {
	switch codec {
	case data.CodecZstd:
		return "zstd"
	case data.CodecS2:
		return "s2"
	}
	return "none"
}

// measure is what a stream spent on a window of batches: compressing, and
// waiting to hand the batch to the stream (the rate limit, then the
// stream's flow control: the link or the controller is behind).
type measure struct {
	compress, send time.Duration
	plain          int64 // block bytes before compression
}

// cost is the stream's time per plain byte.
func (m measure) cost() float64 {
	if m.plain == 0 {
		return 0
	}
	return float64(m.compress+m.send) / float64(m.plain)
}

func (m *measure) add(o measure) {
	m.compress += o.compress
	m.send += o.send
	m.plain += o.plain
}

// The auto rule's thresholds. A stream compresses a batch, then writes
// it; the write returns as soon as the batch fits in the stream's window,
// so the time it waits is the time the link (or the receiver) is behind
// the compressor. S2 makes blocks about four times faster than zstd's
// fastest level, a quarter or so larger.
//
//   - On S2, waiting over s2ToZstd times longer than compressing means the link
//     is the bottleneck by a margin zstd's slower compression fits in: its
//     smaller batches make the stream faster.
//   - On zstd, waiting less than 1/zstdToS2 of the time spent compressing
//     means the link has room to spare: the compressor is the bottleneck
//     and S2 makes the stream faster.
//
// Between the two the codec stays. Near the boundary both codecs run at
// about the link's speed, and each switch doubles the evidence the next
// needs (minEvidence up to maxEvidence), so a link at the boundary costs
// a few switches per cycle, not one per window.
//
// The wait cannot tell a slow link from a slow receiver: a controller
// behind on its own work (or sharing the agent's cores) looks like a slow
// link, and zstd may then only cost time. So a switch is a trial: when
// the first window after it costs the stream more time per plain byte
// (compressing plus waiting) than the window before it, by over
// trialMargin, the stream goes back and keeps that codec for the rest of
// the cycle.
const (
	s2ToZstd    = 4
	zstdToS2    = 8
	trialMargin = 0.10
	minEvidence = 8 << 20   // plain bytes measured before the first decision
	maxEvidence = 512 << 20 // the most a decision waits for
)

// nextCodec is the auto rule: the codec for the next window of a stream
// that used cur for a window that measured m.
func nextCodec(cur uint8, m measure) uint8 {
	switch cur {
	case data.CodecS2:
		if m.send > s2ToZstd*m.compress {
			return data.CodecZstd
		}
	case data.CodecZstd:
		if m.send*zstdToS2 <= m.compress {
			return data.CodecS2
		}
	}
	return cur
}

// chooser is one stream's codec choice.
type chooser struct {
	codec    uint8
	auto     bool
	window   measure // since the last decision
	evidence int64   // plain bytes the next decision waits for
	switches int64
	// before is the cost of the window before a switch while its trial
	// runs (0: no trial); settled stops the rule after a failed trial.
	before  float64
	settled bool
	log     *slog.Logger
}

// newChooser starts a stream's choice: auto starts with S2 when the
// controller accepts it (a fast link is the common case on a LAN, and a
// slow one shows within the first window), else zstd.
func newChooser(choice CodecChoice, s2 bool, log *slog.Logger) *chooser {
	c := &chooser{codec: data.CodecZstd, evidence: minEvidence, log: log}
	switch choice {
	case CodecNone:
		c.codec = data.CodecNone
	case CodecS2:
		if s2 {
			c.codec = data.CodecS2
		} else {
			log.Warn("the controller does not accept S2: sending zstd")
		}
	case CodecZstd:
	default:
		c.auto = s2 // with zstd alone there is nothing to choose
		if s2 {
			c.codec = data.CodecS2
		}
	}
	log.Debug("wire codec", "codec", codecName(c.codec), "auto", c.auto)
	return c
}

// observe adds a batch's measurements and, once the window holds enough
// evidence, applies the auto rule.
func (c *chooser) observe(m measure) {
	if !c.auto {
		return
	}
	c.window.add(m)
	if c.window.plain < c.evidence {
		return
	}
	cost, before := c.window.cost(), c.before
	c.before = 0
	switch next := nextCodec(c.codec, c.window); {
	case before > 0 && cost > before*(1+trialMargin):
		c.settled = true
		c.switchTo(otherCodec(c.codec), "the trial window was slower", cost, before)
	case !c.settled && next != c.codec:
		c.before = cost
		c.switchTo(next, "the rule", cost, 0)
	}
	c.window = measure{}
}

func (c *chooser) switchTo(next uint8, why string, cost, before float64) {
	c.log.Debug("wire codec switched", "from", codecName(c.codec), "to", codecName(next), "why", why,
		"compress_ms", c.window.compress.Milliseconds(), "send_wait_ms", c.window.send.Milliseconds(),
		"plain_bytes", c.window.plain, "ns_per_byte", cost, "before_ns_per_byte", before)
	c.codec = next
	c.switches++
	c.evidence = min(2*c.evidence, maxEvidence)
}

// otherCodec is the auto rule's alternative to codec.
func otherCodec(codec uint8) uint8 {
	if codec == data.CodecS2 {
		return data.CodecZstd
	}
	return data.CodecS2
}
