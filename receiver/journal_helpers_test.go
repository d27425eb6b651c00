package receiver

import (
	"math/rand/v2"

	"github.com/voldelta/voldelta/chunk"
)

// createJournal is createJournalWith a random nonce.
func (v volumeDir) createJournal() (*journal, error) { return v.createJournalWith(rand.Uint64()) }

// readJournal returns the records of the journal, whatever its nonce.
func (v volumeDir) readJournal() (intents, done []chunk.Entry, err error) {
	_, intents, done, err = v.readJournalNonce()
	return intents, done, err
}
