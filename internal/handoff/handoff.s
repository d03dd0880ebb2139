// Empty: lets handoff.go declare the functions it takes from gVisor's
// sync package (go:linkname) without bodies.
