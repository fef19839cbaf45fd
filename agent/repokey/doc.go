// Package repokey holds an encrypted repository's private key on an agent
// (`ferry-agent key install`) and opens the sealed chunks the controller
// sends on restore streams with it: the envelope construction of
// docs/storage-format.md ("Encryption"), implemented here from the
// standard library so that the agent needs neither the storage package nor
// cgo. The controller never holds the private key; an agent that does can
// stage and move an encrypted repository's points without --key-file.
package repokey
