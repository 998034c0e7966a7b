package record

import (
	"strings"
	"unicode/utf8"
)

// Storable returns s as PostgreSQL's text and jsonb columns accept it: NUL
// dropped, invalid UTF-8 replaced by U+FFFD. Anything that reaches the
// database from input (quarantine details, Pub/Sub metadata) goes through
// it, because a value the database refuses fails its whole batch, and a
// redelivered batch fails again.
func Storable(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// Clip is Storable(s) cut to at most max bytes on a character boundary.
func Clip(s string, max int) string {
	s = Storable(s)
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}
