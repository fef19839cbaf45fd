package controller

import (
	"net/http"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/console"
)

// adminHTTP is the TCP admin listener's handler: the web console under
// /ui/ (its own login and session), and the admin API, token-checked, for
// everything else. The console sends its actions to an admin API handler
// in process, so they are validated by the same code as the CLI's.
func (s *Server) adminHTTP(token string) http.Handler {
	log := s.log.With("component", "admin")
	api := admin.NewServer(s, token, log)
	con := console.New(console.Config{
		Backend: s,
		Admin:   admin.NewServer(s, "", log),
		Token:   token,
		Log:     s.log.With("component", "console"),
		Now:     s.now,
	})
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, con)
	mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix, http.StatusSeeOther))
	mux.Handle("GET /ui", http.RedirectHandler(console.Prefix, http.StatusSeeOther))
	mux.Handle("/", api)
	return mux
}
