// Package cliflags holds what the ferry and ferry-agent commands share
// about their flags.
package cliflags

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// WithSuggestion adds "did you mean --X?" to cobra's unknown-flag
// error when the command has a flag close to the one given: a misspelling
// (two edits or fewer, fewer for short names), or a longer or shorter form of one of its flags
// (serve's --admin-socket given to a client command, whose flag is
// --admin; --state for --state-dir).
func WithSuggestion(cmd *cobra.Command, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok || name == "" {
		return err
	}
	// Edits allowed grow with the name: a two-letter flag two edits away
	// from another is no suggestion.
	best, bestScore := "", min(2, (len(name)-1)/2)+1
	visit := func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		score := editDistance(name, f.Name)
		if strings.HasPrefix(name, f.Name+"-") || strings.HasPrefix(f.Name, name+"-") {
			score = min(score, 1)
		}
		if score < bestScore {
			best, bestScore = f.Name, score
		}
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	if best == "" {
		return err
	}
	return fmt.Errorf("%w (did you mean --%s?)", err, best)
}

// editDistance is the Levenshtein distance of a and b (flag names: short).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
