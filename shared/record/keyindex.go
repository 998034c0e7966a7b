package record

import (
	"encoding/binary"
	"math/bits"
)

// A keyIndex finds the field a JSON key names with one hash and one
// comparison of a few machine words: the decoder looks up every key of every
// record, and comparing the key with each field of its length (memequal, a
// call each) cost ~2k instructions a record. It is built at init from the
// table; a switch over the names would be as fast but a second list of the
// fields.
type keyIndex struct {
	seed   uint64
	slots  [1 << keyBits]keySlot // the empty ones have id fUnknown
	linear bool                  // no seed tried gives each key a slot of its own: search all
	all    []keySlot
}

// keyBits sizes a keyIndex: 256 slots keep a multiplier that separates a
// few dozen keys easy to find.
const keyBits = 8

// keySlot holds a key as keyWords splits it, next to its field.
type keySlot struct {
	w0, w1, mid uint64
	key         string
	id          fieldID
}

// keyWords packs key into words that, with its length, are the key for up
// to 24 bytes: its first and last 8 (overlapping when shorter than 16) and
// bytes 8 to 16; or its first and last 4; or each byte.
func keyWords(key []byte) (w0, w1, mid uint64) {
	n := len(key)
	switch {
	case n >= 8:
		w0, w1 = binary.LittleEndian.Uint64(key), binary.LittleEndian.Uint64(key[n-8:])
		if n > 16 {
			mid = binary.LittleEndian.Uint64(key[8:])
		}
	case n >= 4:
		w0 = uint64(binary.LittleEndian.Uint32(key)) | uint64(binary.LittleEndian.Uint32(key[n-4:]))<<32
	default:
		for i, c := range key {
			w0 |= uint64(c) << (8 * i)
		}
	}
	return w0, w1, mid
}

func (x *keyIndex) slot(w0, w1, mid uint64, n int) *keySlot {
	h := (w0 ^ bits.RotateLeft64(w1, 21) ^ bits.RotateLeft64(mid, 42) ^ uint64(n)) * x.seed
	return &x.slots[h>>(64-keyBits)]
}

// newKeyIndex indexes keys with the first multiplier that gives each its
// own slot.
func newKeyIndex(keys []keySlot) *keyIndex {
	for i := range keys {
		keys[i].w0, keys[i].w1, keys[i].mid = keyWords([]byte(keys[i].key))
	}
	x := &keyIndex{all: keys}
	const golden = 0x9e3779b97f4a7c15 // odd: a good multiplier to start from
	for x.seed = golden; x.seed < golden+2000; x.seed += 2 {
		for i := range x.slots {
			x.slots[i] = keySlot{id: fUnknown}
		}
		separate := true
		for _, k := range keys {
			s := x.slot(k.w0, k.w1, k.mid, len(k.key))
			separate = separate && s.id == fUnknown
			*s = k
		}
		if separate {
			return x
		}
	}
	x.linear = true
	return x
}

// lookup returns the field named key, or fUnknown.
func (x *keyIndex) lookup(key []byte) fieldID {
	w0, w1, mid := keyWords(key)
	s := x.slot(w0, w1, mid, len(key))
	if s.w0 == w0 && s.w1 == w1 && s.mid == mid && len(s.key) == len(key) && (len(key) <= 24 || s.key == string(key)) {
		return s.id
	}
	if x.linear {
		return x.search(key)
	}
	return fUnknown
}

func (x *keyIndex) search(key []byte) fieldID {
	for _, k := range x.all {
		if k.key == string(key) {
			return k.id
		}
	}
	return fUnknown
}

// topLevel indexes the fields of the record object.
var topLevel = func() keyIndex {
	var keys []keySlot
	for i, f := range fields {
		if f.Key != "" && parentOf(fieldID(i)) < 0 {
			keys = append(keys, keySlot{key: f.Key, id: fieldID(i)})
		}
	}
	return *newKeyIndex(keys)
}()

// lookupField returns the top-level field named key, or fUnknown.
func lookupField(key []byte) fieldID { return topLevel.lookup(key) }

// memberIndex indexes, for each object field, its members by their names
// within the object (subject for identity.subject).
var memberIndex = func() (m [numFields]*keyIndex) {
	var keys [numFields][]keySlot
	for i := range fields {
		if p := parentOf(fieldID(i)); p >= 0 {
			keys[p] = append(keys[p], keySlot{key: fields[i].Key[len(fields[p].Key)+1:], id: fieldID(i)})
		}
	}
	for i := range fields {
		if fields[i].Kind == KindObject {
			m[i] = newKeyIndex(keys[i])
		}
	}
	return m
}()

// lookupMember returns the member field of the object field obj named key.
func lookupMember(obj fieldID, key []byte) fieldID { return memberIndex[obj].lookup(key) }
