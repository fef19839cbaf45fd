package controller

import (
	"fmt"
	"net/http"

	"github.com/ferrydr/ferry/protocol/msg"
)

// installHandler serves the HTTPS side of the agent port: what answers
// without a client certificate besides enrolment.
func (s *Server) installHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return mux
}

// installCommands are the one-liners of `tokens create --install-command`.
func (s *Server) installCommands(controller string, tok msg.Token) []string {
	addr := s.advertised(controller)
	return []string{
		fmt.Sprintf("curl -fsS --pinnedpubkey 'sha256//%s' -k https://%s/install.sh | sudo sh -s -- --controller %s --token %s",
			tok.Pin, addr, addr, tok.String()),
		fmt.Sprintf(`powershell -NoProfile -ExecutionPolicy Bypass -Command "& ([scriptblock]::Create((New-Object Net.WebClient).DownloadString('https://%s/install.ps1'))) -Controller %s -Token %s -Pin %s"`,
			addr, addr, tok.String(), tok.Pin),
	}
}
