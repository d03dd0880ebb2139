package procinfo

// Close releases what the Finder holds: the sock_diag socket of
// NewFinderIn. A Finder from NewFinder has nothing to release.
func (f *Finder) Close() error { return f.sys.close() }
