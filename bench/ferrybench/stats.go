package main

import (
	"math"
	"slices"
)

// median of xs (the mean of the middle two for an even count); NaN for
// none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank percentile p (0 < p ≤ 100) of xs: the
// smallest sample with at least p% of the samples at or below it. NaN for
// none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// ratios divides each run's figure by the anchor of the same run.
func ratios(ferry, anchor []float64) []float64 {
	out := make([]float64, 0, len(ferry))
	for i := range min(len(ferry), len(anchor)) {
		out = append(out, ferry[i]/anchor[i])
	}
	return out
}

// column is f of every run, in order: one row's figures.
func column[R any](runs []R, f func(R) float64) []float64 {
	out := make([]float64, len(runs))
	for i, r := range runs {
		out[i] = f(r)
	}
	return out
}

// sum is the total of xs.
func sum(xs []float64) float64 {
	var t float64
	for _, x := range xs {
		t += x
	}
	return t
}
