package cliflags

import (
	"errors"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

func TestWithSuggestion(t *testing.T) {
	root := &cobra.Command{Use: "x"}
	root.PersistentFlags().String("admin", "", "")
	sub := &cobra.Command{Use: "sub"}
	sub.Flags().String("state-dir", "", "")
	sub.Flags().String("secret", "", "")
	require.NoError(t, sub.Flags().MarkHidden("secret"))
	root.AddCommand(sub)

	for _, c := range []struct{ given, want string }{
		{"unknown flag: --admin-socket", "unknown flag: --admin-socket (did you mean --admin?)"},
		{"unknown flag: --state-dri", "unknown flag: --state-dri (did you mean --state-dir?)"},
		{"unknown flag: --state", "unknown flag: --state (did you mean --state-dir?)"},
		{"unknown flag: --statedir", "unknown flag: --statedir (did you mean --state-dir?)"},
		{"unknown flag: --secrt", "unknown flag: --secrt"},           // hidden flags are not offered
		{"unknown flag: --sd", "unknown flag: --sd"},                 // two edits from nothing useful
		{"unknown flag: --frobnicate", "unknown flag: --frobnicate"}, // close to nothing
		{"unknown shorthand flag: 'q' in -q", "unknown shorthand flag: 'q' in -q"},
	} {
		require.Equal(t, c.want, WithSuggestion(sub, errors.New(c.given)).Error())
	}
	require.Equal(t, 0, editDistance("abc", "abc"))
	require.Equal(t, 2, editDistance("state-dri", "state-dir"))
	require.Equal(t, 3, editDistance("", "abc"))
}
