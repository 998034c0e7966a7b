package privacy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// What the quarantine keeps of refused input, when the policy is active:
//
//   - JSON (a record, a LogEntry carrying one, an array or a stream of
//     them) is rewritten: every member named like a personal field
//     (client_ip, forwarded_client_ip, developer_email, and subject and email inside an identity
//     object, at any depth, also inside a textPayload string that is JSON)
//     takes the field's mode, like a stored row; other bytes keep their
//     meaning (white space and escapes may change). A value the mode cannot
//     take (truncate of something that is not an address) is replaced by
//     Withheld.
//   - Anything else cannot be searched for personal data, so none of it is
//     kept: the payload becomes {"withheld": {"bytes": N, "hmac": "…"}},
//     the length and a digest keyed like the tenant's pseudonyms (so an
//     operator holding the original can check it is the one, and erasure
//     by key covers it too). Without a key, only the length.
//
// Either way a replay of a quarantined payload is a diagnosis, not the
// original; the original is only ever in the sender's hands.

// Withheld replaces a personal value the mode cannot transform.
const Withheld = "withheld"

// maxRewriteDepth bounds nesting; deeper input is withheld whole. The
// record decoder refuses deeper unknown fields anyway.
const maxRewriteDepth = 128

var errTooDeep = errors.New("privacy: nesting too deep")

// Payload returns what the quarantine may keep of raw for tenant.
func (p *Pseudonymiser) Payload(tenant string, raw []byte) []byte {
	if !p.Active() {
		return raw
	}
	if out, err := p.rewrite(tenant, raw); err == nil {
		return out
	}
	return p.Withhold(tenant, raw)
}

// Withhold returns the placeholder for bytes that are not kept.
func (p *Pseudonymiser) Withhold(tenant string, raw []byte) []byte {
	w := map[string]any{"bytes": len(raw)}
	if p.keys != nil {
		w["hmac"] = p.keys.digest(tenant, raw)
	}
	b, _ := json.Marshal(map[string]any{"withheld": w}) // plain values always marshal
	return b
}

// Digest is the "hmac" a withheld payload records, for an operator who
// holds the original; "" without a key.
func (p *Pseudonymiser) Digest(tenant string, raw []byte) string {
	if p == nil || p.keys == nil {
		return ""
	}
	return p.keys.digest(tenant, raw)
}

// rewrite applies the policy to every JSON value in raw, a stream of one
// or more values; any syntax error fails it.
func (p *Pseudonymiser) rewrite(tenant string, raw []byte) ([]byte, error) {
	raw = bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf"))
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	w := &rewriter{p: p, tenant: tenant, dec: dec}
	n := 0
	for ; ; n++ {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if n > 0 {
			w.out.WriteByte('\n')
		}
		if err := w.value(tok, "", 0); err != nil {
			return nil, err
		}
	}
	if n == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	return w.out.Bytes(), nil
}

type rewriter struct {
	p      *Pseudonymiser
	tenant string
	dec    *json.Decoder
	out    bytes.Buffer
}

// value writes the value starting with tok; field is the personal field it
// is the value of ("" for none), identity whether it is an identity
// object's.
func (w *rewriter) value(tok json.Token, field string, depth int) error {
	if depth > maxRewriteDepth {
		return errTooDeep
	}
	if field != "" && w.p.policy.Mode(field) != Keep {
		return w.personal(tok, field, depth)
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return w.array(depth)
		}
		return w.object(field == "identity", depth)
	case string:
		b, _ := json.Marshal(t) // a string always marshals
		w.out.Write(b)
	case json.Number:
		w.out.WriteString(t.String())
	case bool:
		w.out.WriteString(strconv.FormatBool(t))
	case nil:
		w.out.WriteString("null")
	}
	return nil
}

func (w *rewriter) array(depth int) error {
	w.out.WriteByte('[')
	for i := 0; w.dec.More(); i++ {
		if i > 0 {
			w.out.WriteByte(',')
		}
		tok, err := w.dec.Token()
		if err != nil {
			return err
		}
		if err := w.value(tok, "", depth+1); err != nil {
			return err
		}
	}
	_, err := w.dec.Token() // ]
	w.out.WriteByte(']')
	return err
}

// object writes an object, giving personal members their mode; inIdentity
// says its subject and email members are identity.subject and
// identity.email.
func (w *rewriter) object(inIdentity bool, depth int) error {
	w.out.WriteByte('{')
	written := 0
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string) // object keys are strings
		field := memberField(key, inIdentity)
		if tok, err = w.dec.Token(); err != nil {
			return err
		}
		if field != "" && field != "identity" && w.p.policy.Mode(field) == Drop {
			if err := w.skip(tok, depth+1); err != nil {
				return err
			}
			continue
		}
		if written > 0 {
			w.out.WriteByte(',')
		}
		written++
		kb, _ := json.Marshal(key)
		w.out.Write(kb)
		w.out.WriteByte(':')
		if s, ok := tok.(string); ok && key == "textPayload" {
			w.text(s)
			continue
		}
		if err := w.value(tok, field, depth+1); err != nil {
			return err
		}
	}
	_, err := w.dec.Token() // }
	w.out.WriteByte('}')
	return err
}

// memberField names the personal field (or "identity") a member key is.
func memberField(key string, inIdentity bool) string {
	switch {
	case inIdentity && (key == "subject" || key == "email"):
		return "identity." + key
	case isAddress(key), key == "developer_email", key == "identity":
		return key
	}
	return ""
}

// text rewrites a textPayload string: a LogEntry can carry the record as
// JSON text.
func (w *rewriter) text(s string) {
	out := w.p.Payload(w.tenant, []byte(s))
	b, _ := json.Marshal(string(out))
	w.out.Write(b)
}

// personal writes the value of a personal field under its mode (Drop is
// handled by object).
func (w *rewriter) personal(tok json.Token, field string, depth int) error {
	s, isString := tok.(string)
	if !isString {
		// Not a value the record would accept; nothing of it is kept.
		if err := w.skip(tok, depth); err != nil {
			return err
		}
		s = Withheld
	} else {
		s = w.p.transform(field, w.tenant, s)
	}
	b, _ := json.Marshal(s)
	w.out.Write(b)
	return nil
}

// transform is the stored form of a personal string value, or Withheld.
func (p *Pseudonymiser) transform(field, tenant, s string) string {
	m := p.policy.Mode(field)
	if isAddress(field) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Withheld
		}
		return p.Addr(m, a.Unmap().WithZone("")).String()
	}
	if m == HMAC && s != "" {
		return p.keys.Pseudonym(tenant, s)
	}
	return s
}

// skip consumes the rest of the value starting with tok.
func (w *rewriter) skip(tok json.Token, depth int) error {
	if depth > maxRewriteDepth {
		return errTooDeep
	}
	if _, ok := tok.(json.Delim); !ok {
		return nil
	}
	for w.dec.More() {
		t, err := w.dec.Token()
		if err != nil {
			return err
		}
		if err := w.skip(t, depth+1); err != nil {
			return err
		}
	}
	_, err := w.dec.Token()
	if err != nil {
		return fmt.Errorf("privacy: %w", err)
	}
	return nil
}
