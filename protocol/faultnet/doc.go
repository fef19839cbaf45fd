// Package faultnet injects network faults into tests over real sockets: a
// TCP proxy on the loopback that forwards between a client and a target and
// can cut every connection after a number of bytes, cut them now, or stall
// them (stop forwarding but keep the sockets open, as a dead link does). It
// counts the bytes it forwards, so benchmarks can measure what went over
// the wire.
package faultnet
