//go:build !unix

package socksclient

// WaitRead returns at once here: ReadFrom blocks instead.
func (u *UDPConn) WaitRead() error { return nil }
