package controller

import (
	"context"
	"net"
	"os"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// CreateToken mints an enrolment token.
func (s *Server) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.Token, error) {
	ttl := req.TTL.Std()
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	if req.Uses <= 0 {
		req.Uses = 1
	}
	now := s.now()
	tok, err := msg.NewToken(s.ca.Pin(), now.Add(ttl))
	if err != nil {
		return api.Token{}, err
	}
	if err := s.cat.AddToken(ctx, catalog.Token{ID: tok.ID, SecretHash: msg.SecretHash(tok.Secret), Created: now, Expires: tok.Expires, Uses: req.Uses}); err != nil {
		return api.Token{}, err
	}
	out := api.Token{ID: tok.ID, Created: now, Expires: tok.Expires, Uses: req.Uses, Token: tok.String()}
	if req.InstallCommand {
		out.Commands = s.installCommands(req.Controller, tok)
	}
	return out, nil
}

// advertised is the HOST:PORT agents should dial.
func (s *Server) advertised(override string) string {
	if override != "" {
		return override
	}
	if s.cfg.Advertise != "" {
		return s.cfg.Advertise
	}
	host, port, _ := net.SplitHostPort(s.agentAddr)
	if host == "" || host == "::" || host == "0.0.0.0" {
		if hn, err := os.Hostname(); err == nil {
			host = hn
		}
	}
	return net.JoinHostPort(host, port)
}

// Tokens lists tokens (never their secrets).
func (s *Server) Tokens(ctx context.Context) ([]api.Token, error) {
	ts, err := s.cat.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Token{}
	for _, t := range ts {
		out = append(out, api.Token{ID: t.ID, Created: t.Created, Expires: t.Expires, Uses: t.Uses, Used: t.Used, Revoked: t.Revoked})
	}
	return out, nil
}

// RevokeToken revokes a token.
func (s *Server) RevokeToken(ctx context.Context, id string) error {
	return apiErr(s.cat.RevokeToken(ctx, id))
}
