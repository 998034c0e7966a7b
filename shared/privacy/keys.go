package privacy

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sync"

	"apigee-timescale/shared/secrets"
)

// Pseudonym format: PseudonymPrefix, then the first PseudonymBytes of
// HMAC-SHA256(tenant key, value) in unpadded base64url (22 characters).
// 128 bits: among a billion distinct values of one tenant the chance that
// two share a pseudonym is about n²/2¹²⁹ ≈ 10⁻²¹, so grouping by pseudonym
// groups by value; the prefix tells a pseudonym from a value at a glance and
// leaves room for a new format.
const (
	PseudonymPrefix = "p1:"
	PseudonymBytes  = 16
)

// Key derivation: tenant key = HKDF-SHA256(material, salt, "pseudonym\x00"
// ‖ tenant). HKDF (RFC 5869) rather than a bare HMAC(material, tenant):
// its extract step makes a uniform key of any material (a passphrase in
// INGEST_PRIVACY_KEY included), and the info string separates this use
// from any later one (a payload encryption key, say) under one secret.
var kdfSalt = []byte("apigee-timescale privacy v1")

// maxCachedTenants bounds the derived keys kept; the tenant comes from the
// record, so a sender could otherwise grow the cache without end.
const maxCachedTenants = 10000

// Keys derives each tenant's pseudonym key from the key material.
type Keys struct {
	def     []byte
	tenants map[string][]byte

	mu    sync.Mutex
	cache map[string]*tenantKey
}

// tenantKey is a derived key and a pool of HMACs keyed with it: an HMAC's
// set-up costs more than hashing one short value.
type tenantKey struct {
	key  []byte
	macs sync.Pool
}

func newTenantKey(key []byte) *tenantKey {
	tk := &tenantKey{key: key}
	tk.macs.New = func() any { return hmac.New(sha256.New, key) }
	return tk
}

// keyFile is the JSON form of the key material.
type keyFile struct {
	Default string            `json:"default"`
	Tenants map[string]string `json:"tenants"`
}

// ParseKeys reads key material. Either the whole payload (surrounding
// white space trimmed) is the key every tenant's is derived from, or it is
// JSON {"default": "…", "tenants": {"acme": "…"}}: a listed tenant's key
// is derived from its own entry, so that replacing that entry (and
// destroying the old versions) erases that tenant alone. Every key is at
// least MinKeyBytes bytes. Errors never quote the material.
func ParseKeys(material []byte) (*Keys, error) {
	material = bytes.TrimSpace(material)
	k := &Keys{cache: map[string]*tenantKey{}}
	if len(material) > 0 && material[0] == '{' {
		var f keyFile
		dec := json.NewDecoder(bytes.NewReader(material))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return nil, errors.New("privacy: key material is not {\"default\": …, \"tenants\": {…}}")
		}
		k.def = []byte(f.Default)
		k.tenants = map[string][]byte{}
		for t, v := range f.Tenants {
			if len(v) < MinKeyBytes {
				return nil, fmt.Errorf("privacy: the key of tenant %q is %d bytes, at least %d are needed", t, len(v), MinKeyBytes)
			}
			k.tenants[t] = []byte(v)
		}
	} else {
		k.def = material
	}
	if len(k.def) < MinKeyBytes {
		return nil, fmt.Errorf("privacy: the default key is %d bytes, at least %d are needed", len(k.def), MinKeyBytes)
	}
	return k, nil
}

// Tenant returns tenant's pseudonym key.
func (k *Keys) Tenant(tenant string) []byte { return k.tenant(tenant).key }

func (k *Keys) tenant(tenant string) *tenantKey {
	k.mu.Lock()
	tk, ok := k.cache[tenant]
	k.mu.Unlock()
	if ok {
		return tk
	}
	material, own := k.tenants[tenant]
	if !own {
		material = k.def
	}
	key, err := hkdf.Key(sha256.New, material, kdfSalt, "pseudonym\x00"+tenant, sha256.Size)
	if err != nil {
		panic("privacy: hkdf: " + err.Error()) // only for lengths above 255 hashes
	}
	tk = newTenantKey(key)
	k.mu.Lock()
	if len(k.cache) < maxCachedTenants {
		k.cache[tenant] = tk
	}
	k.mu.Unlock()
	return tk
}

// mac returns HMAC-SHA256 under tenant's key of the parts, into sum.
func (k *Keys) mac(tenant string, sum *[sha256.Size]byte, parts ...[]byte) {
	tk := k.tenant(tenant)
	m := tk.macs.Get().(hash.Hash)
	m.Reset()
	for _, p := range parts {
		m.Write(p)
	}
	m.Sum(sum[:0])
	tk.macs.Put(m)
}

// Pseudonym returns the pseudonym of value for tenant.
func (k *Keys) Pseudonym(tenant, value string) string {
	var sum [sha256.Size]byte
	k.mac(tenant, &sum, []byte(value))
	var out [len(PseudonymPrefix) + (PseudonymBytes*8+5)/6]byte
	copy(out[:], PseudonymPrefix)
	base64.RawURLEncoding.Encode(out[len(PseudonymPrefix):], sum[:PseudonymBytes])
	return string(out[:])
}

// digest is a keyed digest of bytes the quarantine withholds. Values never
// hold NUL (the record refuses it), so the prefix keeps digests and
// pseudonyms apart under the same key.
func (k *Keys) digest(tenant string, b []byte) string {
	var sum [sha256.Size]byte
	k.mac(tenant, &sum, []byte("payload\x00"), b)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// LoadKeys reads the key material c names: INGEST_PRIVACY_KEY, or the
// secret INGEST_PRIVACY_KEY_SECRET through the Secret Manager client. It
// returns nil when neither is set.
func LoadKeys(ctx context.Context, c Config) (*Keys, error) {
	switch {
	case c.Key != "":
		k, err := ParseKeys([]byte(c.Key))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvKey, err)
		}
		return k, nil
	case c.KeySecret == "":
		return nil, nil
	}
	client, err := secrets.NewClient(ctx, c.SecretManagerEndpoint)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvKeySecret, err)
	}
	defer client.Close() //nolint:errcheck // read once
	data, version, err := secrets.Access(ctx, client, c.KeySecret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvKeySecret, err)
	}
	k, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w", EnvKeySecret, version, err)
	}
	return k, nil
}
