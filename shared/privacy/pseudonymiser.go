package privacy

import (
	"context"
	"net/netip"

	"apigee-timescale/shared/record"
)

// Pseudonymiser applies a Policy under a set of Keys. The zero policy keeps
// everything; a nil *Pseudonymiser does too. Safe for concurrent use.
type Pseudonymiser struct {
	policy Policy
	keys   *Keys
}

// New returns the Pseudonymiser of p; keys may be nil only when no field is
// hmac.
func New(p Policy, keys *Keys) (*Pseudonymiser, error) {
	if p.NeedsKey() && keys == nil {
		return nil, &ConfigError{Var: EnvPrivacy, Msg: "hmac needs a key: set " + EnvKeySecret + " (or " + EnvKey + " for local runs)"}
	}
	return &Pseudonymiser{policy: p, keys: keys}, nil
}

// Load reads c's key (when it names one) and returns its Pseudonymiser.
func Load(ctx context.Context, c Config) (*Pseudonymiser, error) {
	keys, err := LoadKeys(ctx, c)
	if err != nil {
		return nil, err
	}
	return New(c.Policy, keys)
}

// Active reports whether some field is not kept as it came.
func (p *Pseudonymiser) Active() bool { return p != nil && p.policy.Active() }

// Policy returns the policy applied.
func (p *Pseudonymiser) Policy() Policy { return p.policy }

// Keys returns the keys, nil when none was configured.
func (p *Pseudonymiser) Keys() *Keys { return p.keys }

// Record applies the policy to r's personal fields, under the key of r's
// tenant. It runs before the row is hashed, so the batch's rows_sha256 is
// over what is stored.
func (p *Pseudonymiser) Record(r *record.Record) {
	if p.Active() {
		p.apply(r, p.text)
	}
}

// Records is Record for the records of one message, which mostly share
// their developer and caller: each distinct value is pseudonymised once.
func (p *Pseudonymiser) Records(rs []record.Record) {
	if !p.Active() {
		return
	}
	memo := map[[2]string]string{}
	text := func(m Mode, tenant, v string) string {
		if m != HMAC || v == "" {
			return p.text(m, tenant, v)
		}
		k := [2]string{tenant, v}
		out, ok := memo[k]
		if !ok {
			out = p.keys.Pseudonym(tenant, v)
			memo[k] = out
		}
		return out
	}
	for i := range rs {
		p.apply(&rs[i], text)
	}
}

func (p *Pseudonymiser) apply(r *record.Record, text func(m Mode, tenant, v string) string) {
	r.ClientIP = p.Addr(p.policy.Mode("client_ip"), r.ClientIP)
	r.ForwardedClientIP = p.Addr(p.policy.Mode("forwarded_client_ip"), r.ForwardedClientIP)
	r.DeveloperEmail = text(p.policy.Mode("developer_email"), r.Tenant, r.DeveloperEmail)
	r.Identity.Subject = text(p.policy.Mode("identity.subject"), r.Tenant, r.Identity.Subject)
	r.Identity.Email = text(p.policy.Mode("identity.email"), r.Tenant, r.Identity.Email)
}

// handled lists the personal fields Record knows; a test holds it to the
// field table, so a field newly marked Personal cannot be stored in clear
// unnoticed.
var handled = []string{"client_ip", "forwarded_client_ip", "developer_email", "identity.subject", "identity.email"}

func (p *Pseudonymiser) text(m Mode, tenant, v string) string {
	switch {
	case v == "" || m == Keep:
		return v
	case m == HMAC:
		return p.keys.Pseudonym(tenant, v)
	}
	return "" // Drop (Truncate is refused for text by ParsePolicy)
}

// Addr applies mode m to an address: Truncate keeps its first IPv4Bits or
// IPv6Bits bits (host bits zero, still an address, so still an inet);
// Drop makes it absent.
func (p *Pseudonymiser) Addr(m Mode, a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return a
	}
	switch m {
	case Truncate:
		bits := p.policy.IPv6Bits
		if a.Is4() {
			bits = p.policy.IPv4Bits
		}
		pfx, err := a.Prefix(bits)
		if err != nil {
			return netip.Addr{} // cannot happen: widths are checked at start
		}
		return pfx.Addr()
	case Drop:
		return netip.Addr{}
	}
	return a
}

// Value applies the mode of field key to one value as an operator would
// search for it: the pseudonym of an hmac field, the network of a
// truncated address; ok is false for a dropped field, or an address that
// does not parse.
func (p *Pseudonymiser) Value(key, tenant, v string) (string, bool) {
	m := p.policy.Mode(key)
	if isAddress(key) {
		a, err := netip.ParseAddr(v)
		if err != nil || m == Drop {
			return "", false
		}
		return p.Addr(m, a.Unmap().WithZone("")).String(), true
	}
	if m == Drop {
		return "", false
	}
	return p.text(m, tenant, v), true
}

// isAddress reports whether the personal field key holds an IP address
// (truncated, never hmac'd: its column is inet).
func isAddress(key string) bool { return key == "client_ip" || key == "forwarded_client_ip" }
