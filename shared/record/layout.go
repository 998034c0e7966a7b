package record

import (
	"encoding/json"
	"net/netip"
	"time"
	"unsafe"
)

// The decoder writes each field through a pointer at the field's offset in
// the Record instead of calling the table's ref and asserting the type of
// what it returns: that call and assertion, on every field of every record,
// cost ~600 instructions a record. The offsets are not a second list of the
// fields: layout derives them at init from ref, and checks for each field
// that the type at the offset is the one its Kind writes, so the unsafe
// pointer arithmetic can only produce a pointer ref itself would return.
// TestLayoutMatchesRef compares the two for every field.

// store is the Go type of a Record field.
type store uint8

const (
	stNone store = iota
	stString
	stTime
	stInt16
	stOptInt16
	stOptInt32
	stOptInt64
	stOptBool
	stAddr
	stStrings
	stStringMap
	stRawMap
)

// kindStores are the types each Kind may be stored as.
var kindStores = map[Kind][]store{
	KindSchema: {stNone}, KindObject: {stNone},
	KindText: {stString}, KindMessageID: {stString}, KindVerb: {stString}, KindPath: {stString},
	KindUserAgent: {stString}, KindAuth: {stString},
	KindTime:       {stTime},
	KindInt:        {stInt16, stOptInt16, stOptInt32, stOptInt64},
	KindBool:       {stOptBool},
	KindIP:         {stAddr},
	KindScopes:     {stStrings},
	KindAttributes: {stStringMap},
	KindExtra:      {stRawMap},
}

type place struct {
	off uintptr
	st  store
}

// layout is where and as what type each field is stored.
var layout = func() (l [numFields]place) {
	r := new(Record) // on the heap: its address cannot move while it is measured
	for i, f := range fields {
		var p unsafe.Pointer
		var size uintptr
		if f.ref != nil {
			switch x := f.ref(r).(type) {
			case *string:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stString
			case *time.Time:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stTime
			case *int16:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stInt16
			case **int16:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stOptInt16
			case **int32:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stOptInt32
			case **int64:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stOptInt64
			case **bool:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stOptBool
			case *netip.Addr:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stAddr
			case *[]string:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stStrings
			case *map[string]string:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stStringMap
			case *map[string]json.RawMessage:
				p, size, l[i].st = unsafe.Pointer(x), unsafe.Sizeof(*x), stRawMap
			default:
				panic("record: field " + f.Key + " has a Record type the decoder does not store")
			}
			off := uintptr(p) - uintptr(unsafe.Pointer(r))
			if uintptr(p) < uintptr(unsafe.Pointer(r)) || off+size > unsafe.Sizeof(*r) {
				panic("record: the ref of field " + f.Key + " points outside the Record")
			}
			l[i].off = off
		}
		ok := false
		for _, st := range kindStores[f.Kind] {
			ok = ok || st == l[i].st
		}
		if !ok {
			panic("record: field " + f.Name + " is not stored as its Kind is decoded")
		}
	}
	return l
}()

// at returns the address of field id in r. T must be the type of layout[id].st,
// as the Kind of the field guarantees (checked by layout at init).
func at[T any](r *Record, id fieldID) *T {
	return (*T)(unsafe.Add(unsafe.Pointer(r), layout[id].off))
}
