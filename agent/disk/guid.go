package disk

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// guid is a GUID in its on-disk (Microsoft mixed-endian) byte order: the
// first three fields little-endian, the last eight bytes as written.
type guid [16]byte

// mustGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" for the constant
// GUIDs of the specifications; it panics only on a typo in this package.
func mustGUID(s string) guid {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

func parseGUID(s string) (guid, error) {
	var g guid
	s = strings.Trim(strings.TrimSpace(s), "{}")
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 || strings.Count(s, "-") != 4 {
		return g, fmt.Errorf("bad GUID %q", s)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}

func (g guid) String() string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

func (g guid) isZero() bool { return g == guid{} }
