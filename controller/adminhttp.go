package controller

import (
	"context"
	"net/http"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/console"
)

// adminHTTP is the TCP admin listener's handler: the web console under
// /ui/ (its own login and session: a browser holds no bearer token), and
// for everything else the admin API and /metrics, token-checked. The
// console sends its actions to an admin API handler in process, marked
// with the console's identity, so they are validated and audited by the
// same code as the CLI's.
func (s *Server) adminHTTP(token string) http.Handler {
	who := admin.Identity{Who: admin.TokenIdentity(token), Via: "console"}
	con := console.New(console.Config{
		Backend: s,
		Admin:   s.adminHandler(""),
		Token:   token,
		Log:     s.log.With("component", "console"),
		Now:     s.now,
		Identity: func(ctx context.Context) context.Context {
			return admin.WithIdentity(ctx, who)
		},
	})
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, con)
	mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix, http.StatusSeeOther))
	mux.Handle("GET /ui", http.RedirectHandler(console.Prefix, http.StatusSeeOther))
	mux.Handle("/", s.adminHandler(token))
	return mux
}
