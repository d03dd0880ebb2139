//go:build !unix

package relay

import (
	"net"
	"syscall"
)

// canReadKernel says kernelReader works here: not on this system, where
// kernel sockets are read with a buffer taken first.
const canReadKernel = false

type kernelReader struct {
	sink func(int) error
}

func newKernelReader(*net.TCPConn, syscall.RawConn, func(**[]byte)) *kernelReader {
	panic("relay: kernelReader on a system without it")
}

func (*kernelReader) read(**[]byte) (int, error) {
	panic("relay: kernelReader on a system without it")
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
