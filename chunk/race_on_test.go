//go:build race

package chunk

// raceEnabled: the race detector slows the scan tenfold; property tests run
// fewer cases under it (the fuzzer explores further).
const raceEnabled = true
