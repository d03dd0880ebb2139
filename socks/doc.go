// Package socks is the SOCKS wire format and nothing else: SOCKS4 and SOCKS4a
// (CONNECT, BIND, USERID), SOCKS5 per RFC 1928 (method negotiation, CONNECT,
// BIND, UDP ASSOCIATE, IPv4/domain/IPv6 addresses, every reply code), the
// RFC 1929 username/password sub-negotiation, and the SOCKS5 UDP request
// header with RFC 1928 section 7 fragment reassembly.
//
// Decoders read exactly the bytes of one message, never more, so a caller can
// hand the connection to a relay afterwards without losing pipelined data.
// They never panic and never allocate more than the protocol's own bounds
// (255 bytes for any length-prefixed or NUL-terminated field) on hostile
// input. Encoders refuse values the wire cannot carry.
package socks
