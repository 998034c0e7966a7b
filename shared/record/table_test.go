package record

import (
	"testing"
)

// topLevelKeys are the JSON keys of the record object, in table order.
func topLevelKeys() []string {
	var keys []string
	for i, f := range fields {
		if f.Key != "" && parentOf(fieldID(i)) < 0 {
			keys = append(keys, f.Key)
		}
	}
	return keys
}

func TestOptNumsFitTheTable(t *testing.T) {
	var n16, n32, n64, nb int
	for _, f := range fields {
		if f.Column == "" || f.ref == nil {
			continue
		}
		switch f.ref(&Record{}).(type) {
		case **int16:
			n16++
		case **int32:
			n32++
		case **int64:
			n64++
		case **bool:
			nb++
		}
	}
	var n optNums
	if n16 > len(n.i16) || n32 > len(n.i32) || n64 > len(n.i64) || nb > 1 {
		t.Errorf("optNums holds %d/%d/%d/1, the table has %d/%d/%d/%d optional int16/int32/int64/bool fields",
			len(n.i16), len(n.i32), len(n.i64), n16, n32, n64, nb)
	}
}
