// Package agent is ferry-agent: Agent.Run keeps a session with the
// controller (dialling out only), serves the controller's requests over it,
// and runs one replication loop per protected machine. Enroll turns a token
// into the agent's identity. The package stays cgo-free.
package agent
