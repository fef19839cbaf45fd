// Package api is the vocabulary of the admin API: the JSON types that the
// controller's admin server returns and the ferry CLI sends. It holds data
// and parsing of user-facing units only, no behaviour.
package api
