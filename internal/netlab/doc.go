// Package netlab builds a small network of Linux network namespaces for
// tests and benchmarks, and degrades it on demand: bandwidth caps, random
// loss, latency in both directions and hard partitions.
//
// Topology: one namespace per site ("home", "recovery", "controller", …)
// and one router namespace. Each site has one veth pair to the router,
// eth0 in the site (10.77.N.2/24) and sN in the router (10.77.N.1/24),
// with the router as its default route. All traffic between sites is
// routed by the router namespace, where the faults are applied:
//
//   - Rate: a tbf qdisc on both ends of the site's veth pair (egress of
//     eth0 caps what the site sends, egress of sN what it receives).
//   - Loss: nftables in the router's forward hook, one chain per site and
//     direction, with `numgen random mod 100 < N drop`.
//   - Partition: a named nftables set of cut interfaces; a cut site's
//     packets are dropped silently in both directions (no reset, no ICMP),
//     as a dead link or a firewall black hole does. Existing connections
//     stay open until the peers' own timeouts notice.
//   - Delay: this kernel has no netem (and no fq for departure times), so
//     tc cannot delay packets; tbf's latency parameter only bounds its
//     queue. Packets to or from a site with a delay are therefore policy
//     routed (ip rule, table 100) through a TUN device in the router
//     namespace, read by a userspace forwarder (delay_linux.go) that holds each
//     packet for the sum of its two sites' one-way delays and writes it
//     back into the TUN device, from which the main table routes it on.
//     It delays every packet, TCP, UDP or ICMP, of every connection, in
//     both directions, at the IP level: the round trip between two sites is
//     2 × (delay of one + delay of the other). A TCP proxy would only
//     delay application reads and hide the real round trip from TCP.
//
// Every packet the router forwards between sites is counted per site and
// direction by named nftables counters (Site.Traffic), after the partition
// and loss rules: the counts are what really crossed the link.
//
// The lab proves its own settings (prove_linux.go): MeasureCap offers UDP
// above the cap and reports what arrives, MeasureRTT times echoes over
// TCP, MeasureLoss counts UDP datagrams. Lab.Prove runs them for a pair of
// sites and fails the test when a result is outside the tolerance of what
// was configured (Lab.Measure and Proof.Check for programs). MeasureRate
// reports TCP goodput, for benchmarks. docs/netlab.md describes the use in
// tests and benchmarks.
//
// New builds a lab for a test or a benchmark (skipping without root);
// Build and Close do the same for other programs. Processes run in a site
// with Site.Command (`ip netns exec`); sockets of the calling process are
// opened in a site with Site.Listen, Site.Dial and Site.ListenPacket
// (setns on a locked OS thread). The lab needs root, ip, tc and nft;
// names include the process id and a random part, and everything is
// removed at the test's cleanup (or Close), failed or not.
package netlab
