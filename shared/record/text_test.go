package record

import "testing"

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
