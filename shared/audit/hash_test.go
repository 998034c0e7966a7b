package audit_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/record"
)

// goldenRow is a record with the message's own columns.
type goldenRow struct {
	record.Record
	PubSubMessageID string
	PublishTime     time.Time
}

// goldenCalls sets every column once with a value and once as NULL, so a
// change to the column order or to any value's encoding shows.
func goldenCalls() []goldenRow {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	i16, i32, i64, yes := int16(502), int32(7), int64(1<<40), true
	full := goldenRow{
		Record: record.Record{
			MessageID: "a\"\\é\n", ReceivedAt: at, Organization: "org", Environment: "prod", APIProxy: "orders-v1",
			APIProxyRevision: &i32, ProxyBasepath: "/orders", RequestVerb: "POST", RequestPath: "/orders/1",
			ResponseStatusCode: 201, TargetResponseCode: &i16, TotalResponseTime: &i32, TargetResponseTime: &i32,
			RequestSize: &i64, ResponseSize: &i64, ClientIP: netip.MustParseAddr("2001:db8::1"),
			UserAgent: "curl/8", TargetHost: "t.example", FaultName: "Fault", IsError: &yes,
			DeveloperApp: "app", DeveloperEmail: "d@example.com", APIProduct: "gold", ClientID: "cid",
			Tenant: "tenant-a",
			Identity: record.Identity{Subject: "sub", Issuer: "https://idp/", Email: "e@example.com",
				Auth: "jwt", Scopes: []string{"a", "b"}},
			Attributes: map[string]string{"z": "1", "a": "2"},
			Extra:      map[string]json.RawMessage{"x_new": json.RawMessage(`{"k":[1,2.50]}`)},
		},
		PubSubMessageID: "ps-1",
		PublishTime:     at.Add(time.Second),
	}
	bare := goldenRow{Record: record.Record{
		MessageID: "b", ReceivedAt: at.Add(-time.Hour), Organization: "org", Environment: "prod",
		APIProxy: "p", RequestVerb: "GET", RequestPath: "/", Tenant: "org",
		ClientIP: netip.MustParseAddr("192.0.2.1"),
	}}
	return []goldenRow{full, bare}
}

// TestHashGolden pins the Hasher to the bytes batches already stored were
// hashed with: rows_sha256 must stay recomputable from the rows.
func TestHashGolden(t *testing.T) {
	const want = "17f923071ddd16c19a8c8ef3af714cdc66ad13046ef60a167de59e25fc4b93cb"
	got := hashRows(42, goldenCalls())
	if hex.EncodeToString(got[:]) != want {
		t.Errorf("hash = %x, want %s", got, want)
	}
}

func hashRows(batchID int64, rows []goldenRow) [32]byte {
	h := audit.NewHasher(batchID)
	var vals []any
	for i := range rows {
		vals = audit.RowValues(vals, &rows[i].Record, &rows[i].PubSubMessageID, &rows[i].PublishTime, batchID)
		h.Row(vals)
	}
	return h.Sum()
}

// A column added after the first revision changes nothing for rows that
// leave it NULL (TestHashGolden's, stored before it existed) and is hashed,
// under its name, when set.
func TestAddedColumnsHashOnlyWhenSet(t *testing.T) {
	rows := goldenCalls()
	before := hashRows(42, rows)
	rows[1].ForwardedClientIP = netip.MustParseAddr("198.51.100.7")
	with := hashRows(42, rows)
	if with == before {
		t.Fatal("forwarded_client_ip is not hashed when set")
	}
	rows[1].ForwardedClientIP = netip.MustParseAddr("198.51.100.8")
	if hashRows(42, rows) == with {
		t.Fatal("the hash ignores forwarded_client_ip's value")
	}
	rows[1].ForwardedClientIP = netip.Addr{}
	if hashRows(42, rows) != before {
		t.Fatal("an unset added column changes the hash of a first-revision row")
	}
}

// TestFormat2Golden pins format 2 (migration 00027): the digest of the
// rows with batch_id 0, then the id bound as the database binds it,
// sha256(int8send(id) || D).
func TestFormat2Golden(t *testing.T) {
	rows := goldenCalls()
	d := audit.NewDigest()
	var vals []any
	for i := range rows {
		vals = audit.RowValues(vals, &rows[i].Record, &rows[i].PubSubMessageID, &rows[i].PublishTime, 0)
		d.Row(vals)
	}
	digest := d.Sum()
	got := audit.BindID(42, digest)
	const want = "af4f0e755034a05b3a14d19ab396ce7e6afa05020c1e94f075f5a4cde05f35ea"
	if hex.EncodeToString(got[:]) != want {
		t.Errorf("format 2 = %x, want %s", got, want)
	}
	bound := sha256.Sum256(append([]byte{0, 0, 0, 0, 0, 0, 0, 42}, digest[:]...))
	if got != bound {
		t.Errorf("BindID(42, D) = %x, want SHA-256(00…2a ‖ D) = %x", got, bound)
	}
	if audit.BindID(43, digest) == got {
		t.Error("format 2 ignores the batch id")
	}
	if got == hashRows(42, rows) {
		t.Error("format 2 is format 1")
	}
}
