//go:build !unix

package relay

import (
	"net"
	"syscall"
)

// canReadKernel says readKernel works here: not on this system, where
// kernel sockets are read with a buffer taken first.
const canReadKernel = false

func readKernel(*net.TCPConn, syscall.RawConn, **[]byte, func(**[]byte)) (int, error) {
	panic("relay: readKernel on a system without it")
}

func writeKernel(*net.TCPConn, syscall.RawConn, []byte) (int, error) {
	panic("relay: writeKernel on a system without it")
}

const rawWriteMax = 0

type kernelWriter struct{}

func (*kernelWriter) Write([]byte) (int, error) {
	panic("relay: kernelWriter on a system without it")
}

func readToKernel(DirectReader, *kernelConn, *kernelWriter) (int, error) {
	panic("relay: readToKernel on a system without it")
}
