package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// testPauseEnv names points (agent.Pause*) at which `ferry-agent run`
// holds until a file exists, as NAME:FILE[,NAME:FILE…]: crash tests
// (internal/e2e/roundtrip_kills_test.go) hold the agent there to kill a
// process at a known moment. It prints "test pause NAME: holding until
// FILE exists" to w when it gets to one (the first hit of each only).
const testPauseEnv = "FERRY_AGENT_TEST_PAUSE"

// testPause parses a testPauseEnv value into the hook.
func testPause(v string, w io.Writer) (func(string), error) {
	files := map[string]string{}
	once := map[string]*sync.Once{}
	for _, e := range strings.Split(v, ",") {
		name, file, ok := strings.Cut(e, ":")
		if !ok || name == "" || file == "" {
			return nil, fmt.Errorf("%q: want NAME:FILE[,NAME:FILE…]", v)
		}
		files[name], once[name] = file, new(sync.Once)
	}
	return func(name string) {
		file, ok := files[name]
		if !ok {
			return
		}
		once[name].Do(func() {
			fmt.Fprintf(w, "test pause %s: holding until %s exists\n", name, file)
			for {
				if _, err := os.Stat(file); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			fmt.Fprintf(w, "test pause %s: released\n", name)
		})
	}, nil
}
