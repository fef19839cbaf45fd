package controller

import (
	"net/http"
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
