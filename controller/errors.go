package controller

import (
	"errors"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/storage"
)

var _ admin.ErrorMapper = (*Server)(nil)

// APIError maps every error a Server method returns to the admin API
// (admin.ErrorMapper): the admin handlers call it for each reply.
func (s *Server) APIError(err error) error { return apiErr(err) }

// apiErr is the one mapping from the controller's errors to the admin
// API's codes. Conditions the admin can act on (a lifecycle refusal, a
// missing name, a held machine, a bad point spec, an agent's own coded
// answer) get their code; anything else — an I/O or database error — is
// internal, never a refusal, and keeps its text.
func apiErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	code := ""
	var refusal *lifecycle.Refusal
	var stepRefusal *failover.Refusal
	var pe *protocol.Error
	switch {
	case errors.As(err, &refusal):
		code = api.CodeFailedPrecondition
	case errors.Is(err, jobs.ErrNotRunning):
		code = api.CodeUnavailable
	case errors.Is(err, catalog.ErrLocked):
		code = api.CodeBusy
	case errors.Is(err, catalog.ErrNotFound), errors.Is(err, points.ErrNoPoint), errors.Is(err, storage.ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, catalog.ErrExists):
		code = api.CodeConflict
	case errors.Is(err, points.ErrBadSpec), errors.Is(err, storage.ErrWrongKey):
		code = api.CodeInvalid
	case errors.Is(err, storage.ErrKeyRequired):
		code = api.CodeFailedPrecondition
	case errors.As(err, &stepRefusal):
		code = api.CodeFailedPrecondition
	case errors.As(err, &pe):
		// An agent's answer keeps its code (and so whether a retry helps).
		code = string(pe.Code)
	default:
		return err // internal
	}
	return &api.Error{Code: code, Message: err.Error()}
}
