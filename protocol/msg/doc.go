// Package msg holds the control messages agents and the controller exchange
// over protocol/rpc: method names and their JSON request and response
// bodies. Fields are only ever added (older peers ignore unknown fields);
// docs/protocol.md lists them.
package msg
