//go:build race

package dataset

// raceEnabled shrinks the real-data tests under the race detector, which slows pixel loops
// twentyfold; the goroutines they exercise are the same.
const raceEnabled = true
