package hyperv

import (
	"embed"
	"encoding/base64"
	"fmt"
	"unicode/utf16"
)

// Operations, one fixed script each.
const (
	opInspect  = "inspect"
	opCreate   = "create"
	opStart    = "start"
	opShutdown = "shutdown"
	opTurnOff  = "turnoff"
	opPause    = "pause"
	opResume   = "resume"
	opRemove   = "remove"
	opProbe    = "probe"
)

var ops = []string{opInspect, opCreate, opStart, opShutdown, opTurnOff, opPause, opResume, opRemove, opProbe}

//go:embed scripts/*.ps1
var scriptFS embed.FS

// ScriptVersion is in every script's first line; bump it when a script's
// contract (parameters or result) changes.
const ScriptVersion = 1

// script returns the full text sent for op: a header line naming it, the
// prelude, the op's body and the epilogue. It is a constant per op.
func script(op string) (string, error) {
	var text string
	for _, part := range []string{"prelude", op, "epilogue"} {
		b, err := scriptFS.ReadFile("scripts/" + part + ".ps1")
		if err != nil {
			return "", fmt.Errorf("hyperv: no script for %q: %w", op, err)
		}
		text += string(b)
	}
	return fmt.Sprintf("# ferry hyperv %s v%d\n%s", op, ScriptVersion, text), nil
}

// encodeCommand is PowerShell's -EncodedCommand form: base64 of UTF-16LE.
func encodeCommand(s string) string {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		b[2*i] = byte(c)
		b[2*i+1] = byte(c >> 8)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeCommand reverses encodeCommand (tests and the fake use it).
func DecodeCommand(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", err
	}
	if len(b)%2 != 0 {
		return "", fmt.Errorf("odd UTF-16 length %d", len(b))
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
	}
	return string(utf16.Decode(u)), nil
}
