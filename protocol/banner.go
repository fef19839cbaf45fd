package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The banner and the verdict are the only bytes of a session that are not
// inside yamux. Their format is frozen across all protocol versions, so that
// any two Ferry builds can always tell each other which versions they speak.
//
//	record  = u16 big-endian length, then that many bytes of text
//	banner  = "FERRY " min "-" max " " name " " software "\n"
//	verdict = "OK " version "\n"  |  "NO " code " " message "\n"
const (
	MaxBannerLen  = 128  // text bytes of a banner record
	MaxVerdictLen = 1024 // text bytes of a verdict record
	MaxNameLen    = 32   // banner name: [a-z0-9_-]
	MaxSoftware   = 64   // banner software version: printable ASCII without spaces
)

// Banner is what each side announces first: who it is and which protocol
// versions it speaks.
type Banner struct {
	Versions VersionRange
	Name     string // "agent", "controller"
	Software string // build version, informative only
}

// BannerError says that a banner or verdict record is malformed. It wraps
// ErrInvalid, or ErrTooLarge for an oversized record.
type BannerError struct {
	Op     string // "banner" or "verdict"
	Reason string
	tooBig bool
}

func (e *BannerError) Error() string { return "ferry: malformed " + e.Op + ": " + e.Reason }

func (e *BannerError) Unwrap() error {
	if e.tooBig {
		return ErrTooLarge
	}
	return ErrInvalid
}

// Validate checks that b can be encoded as is.
func (b Banner) Validate() error {
	if !b.Versions.Valid() {
		return &BannerError{Op: "banner", Reason: fmt.Sprintf("invalid version range %d-%d", b.Versions.Min, b.Versions.Max)}
	}
	if !validName(b.Name) {
		return &BannerError{Op: "banner", Reason: fmt.Sprintf("invalid name %q", b.Name)}
	}
	if !validSoftware(b.Software) {
		return &BannerError{Op: "banner", Reason: fmt.Sprintf("invalid software version %q", b.Software)}
	}
	return nil
}

// SanitizeSoftware turns any build string into a valid banner software field.
func SanitizeSoftware(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s) && sb.Len() < MaxSoftware; i++ {
		c := s[i]
		if c <= ' ' || c > '~' {
			c = '_'
		}
		sb.WriteByte(c)
	}
	if sb.Len() == 0 {
		return "unknown"
	}
	return sb.String()
}

// ValidName reports whether s can name a side in a banner: 1 to
// MaxNameLen bytes of [a-z0-9_-].
func ValidName(s string) bool { return validName(s) }

func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validSoftware(s string) bool {
	if len(s) == 0 || len(s) > MaxSoftware {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// Append appends b's record (length prefix included) to dst. b must be valid.
func (b Banner) Append(dst []byte) []byte {
	text := fmt.Sprintf("FERRY %d-%d %s %s\n", b.Versions.Min, b.Versions.Max, b.Name, b.Software)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(text)))
	return append(dst, text...)
}

// WriteBanner validates b and writes its record to w.
func WriteBanner(w io.Writer, b Banner) error {
	if err := b.Validate(); err != nil {
		return err
	}
	_, err := w.Write(b.Append(nil))
	return err
}

// ReadBanner reads and parses one banner record from r. Transport errors are
// returned as they come (io.EOF before the first byte, io.ErrUnexpectedEOF
// within the record); malformed records give a *BannerError.
func ReadBanner(r io.Reader) (Banner, error) {
	text, err := readRecord(r, "banner", MaxBannerLen)
	if err != nil {
		return Banner{}, err
	}
	var b Banner
	return b, b.parse(text)
}

func (b *Banner) parse(text []byte) error {
	bad := func(reason string) error { return &BannerError{Op: "banner", Reason: reason} }
	s, ok := strings.CutSuffix(string(text), "\n")
	if !ok {
		return bad("no final newline")
	}
	rest, ok := strings.CutPrefix(s, "FERRY ")
	if !ok {
		return bad("does not start with FERRY (not a Ferry peer?)")
	}
	f := strings.Split(rest, " ")
	if len(f) != 3 {
		return bad(fmt.Sprintf("%d fields, want 3", len(f)))
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return bad("version range has no '-'")
	}
	var err error
	if b.Versions.Min, err = parseVersion(lo); err != nil {
		return bad(err.Error())
	}
	if b.Versions.Max, err = parseVersion(hi); err != nil {
		return bad(err.Error())
	}
	b.Name, b.Software = f[1], f[2]
	return b.Validate()
}

// parseVersion accepts decimal 1–65535 without sign or leading zeros, so
// that every banner has exactly one spelling.
func parseVersion(s string) (uint16, error) {
	if len(s) == 0 || len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("bad version %q", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("bad version %q", s)
		}
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad version %q", s)
	}
	return uint16(v), nil
}

// Verdict is each side's answer to the peer's banner: the version it will
// speak, or why it will not go on.
type Verdict struct {
	Version uint16 // when Err is nil
	Err     *Error // refusal; the connection closes after the verdicts
}

// Append appends v's record to dst. An oversized message is truncated so
// the record fits MaxVerdictLen.
func (v Verdict) Append(dst []byte) []byte {
	var text string
	if v.Err == nil {
		text = fmt.Sprintf("OK %d\n", v.Version)
	} else {
		e := v.Err.Truncated()
		msg := strings.Map(func(r rune) rune {
			if r == '\n' || r == '\r' || r == utf8.RuneError {
				return ' '
			}
			return r
		}, e.Message)
		room := MaxVerdictLen - len("NO  \n") - len(e.Code)
		for len(msg) > room {
			_, size := utf8.DecodeLastRuneInString(msg)
			msg = msg[:len(msg)-size]
		}
		text = "NO " + string(e.Code) + " " + msg + "\n"
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(text)))
	return append(dst, text...)
}

// WriteVerdict writes v's record to w.
func WriteVerdict(w io.Writer, v Verdict) error {
	if v.Err == nil && v.Version == 0 {
		return &BannerError{Op: "verdict", Reason: "version 0"}
	}
	_, err := w.Write(v.Append(nil))
	return err
}

// ReadVerdict reads and parses one verdict record from r.
func ReadVerdict(r io.Reader) (Verdict, error) {
	text, err := readRecord(r, "verdict", MaxVerdictLen)
	if err != nil {
		return Verdict{}, err
	}
	var v Verdict
	return v, v.parse(text)
}

func (v *Verdict) parse(text []byte) error {
	bad := func(reason string) error { return &BannerError{Op: "verdict", Reason: reason} }
	s, ok := strings.CutSuffix(string(text), "\n")
	if !ok {
		return bad("no final newline")
	}
	if rest, ok := strings.CutPrefix(s, "OK "); ok {
		ver, err := parseVersion(rest)
		if err != nil {
			return bad(err.Error())
		}
		v.Version = ver
		return nil
	}
	rest, ok := strings.CutPrefix(s, "NO ")
	if !ok {
		return bad("neither OK nor NO")
	}
	code, msg, ok := strings.Cut(rest, " ")
	if !ok {
		return bad("refusal without message")
	}
	if !Code(code).Valid() {
		return bad(fmt.Sprintf("bad code %q", code))
	}
	if !utf8.ValidString(msg) || strings.ContainsAny(msg, "\r\n") {
		return bad("message is not one line of UTF-8")
	}
	v.Err = &Error{Code: Code(code), Message: msg}
	return nil
}

func readRecord(r io.Reader, op string, max int) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n == 0 {
		return nil, &BannerError{Op: op, Reason: "empty record"}
	}
	if n > max {
		return nil, &BannerError{Op: op, Reason: fmt.Sprintf("length %d over %d", n, max), tooBig: true}
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(r, text); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return text, nil
}
