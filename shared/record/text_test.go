package record

import (
	"strings"
	"testing"
	"unicode"
)

func TestStorableAndClip(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		storable string
		clip     string
	}{
		{"clean text is returned as is", "héllo", 3, "héllo", "hé"},
		{"NUL is dropped", "a\x00b", 10, "ab", "ab"},
		{"invalid UTF-8 becomes U+FFFD", "a\xffb", 10, "a\uFFFDb", "a\uFFFDb"},
		{"cut never splits a character", "☃☃", 4, "☃☃", "☃"},
		{"cut after cleaning", "\xff\xffx", 3, "\uFFFDx", "\uFFFD"},
		{"zero max", "abc", 0, "abc", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Storable(tt.in); got != tt.storable {
				t.Errorf("Storable(%q) = %q, want %q", tt.in, got, tt.storable)
			}
			if got := Clip(tt.in, tt.max); got != tt.clip {
				t.Errorf("Clip(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.clip)
			}
		})
	}
}

func TestHasControl(t *testing.T) {
	for s, want := range map[string]bool{
		"": false, "rrt-1-a": false, "a\x00b": true, "a\x1fb": true, "a\x7fb": true, "a b~": false,
		"é": false, "aé\x01": true, "a\u0085b": true, "a\u009fb": true, "a\u00a0b": false, "\u2028": false,
		"a\xffb": false, // invalid UTF-8 is U+FFFD, not a control; the decoder rejects it before
		"rrt-0b1c2d3e4f5a6b7c8-a-eu-12345-6789012-1": false, "rrt-0b1c2d3e4f5a6b7c8-a-eu-12345-6789012-\x7f": true,
		"01234567\x1f": true, "0123456\x1f": true, "\x1f01234567": true, "01234567\u00850": true, "012345678é": false,
		"~~~~~~~~~~~~~~~~ ": false, "        \t": true, "\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f": true,
	} {
		if got := hasControl([]byte(s)); got != want {
			t.Errorf("hasControl(%q) = %v, want %v", s, got, want)
		}
		ref := false
		for _, r := range s {
			ref = ref || unicode.IsControl(r)
		}
		if ref != want {
			t.Errorf("%q: unicode.IsControl says %v", s, ref)
		}
	}
}

// TestHasControlEveryByte puts each byte value at each position of a word
// and after it, where hasControl's word check and its byte loop meet.
func TestHasControlEveryByte(t *testing.T) {
	for c := range 256 {
		for pos := range 17 {
			b := []byte(strings.Repeat("a", 17))
			b[pos] = byte(c)
			want := false
			for _, r := range string(b) {
				want = want || unicode.IsControl(r)
			}
			if got := hasControl(b); got != want {
				t.Errorf("hasControl(%q) = %v, want %v", b, got, want)
			}
		}
	}
}
