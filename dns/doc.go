// Package dns holds tunsocks' fake-IP pool and its DNS responder/forwarder.
//
// The Pool hands out addresses from a reserved range (198.18.0.0/15 and
// fc00::/18 by default) for domain names, so that a connection to such an
// address can be turned back into "name:port" before it reaches the SOCKS
// upstream, which then resolves the name itself; no DNS query for a proxied
// name leaves the host.
//
// The Server answers one DNS message at a time (Handle), over a packet socket
// (ServePacket) or a stream (ServeStream):
//
//   - A and AAAA for names routed to fake IPs are answered from the Pool;
//   - PTR for addresses inside the Pool's ranges is answered from the Pool;
//   - names matched by the fake-IP filter and names routed DIRECT are
//     forwarded to the Direct resolver;
//   - everything else (other query types for proxied names, and names routed
//     to the proxy for a real answer) goes to the Proxy resolver, never to
//     Direct.
//
// Forwarded answers are cached, honouring their TTLs. The package performs no
// I/O of its own apart from the Pool's cache file: resolvers dial through the
// function they are given, and the servers use the sockets they are given.
package dns
