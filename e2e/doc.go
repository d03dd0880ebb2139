// Package e2e holds the end-to-end tests of the capture pipeline: real
// tunsocks processes, a real TUN device and real peers (curl, dig, ping,
// dnsmasq, tshark, dante-server) in network namespaces that each test
// creates and deletes (see package lab). They need root; under CI=true a
// missing privilege or peer fails the test instead of skipping it.
package e2e
