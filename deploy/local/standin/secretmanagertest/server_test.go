package secretmanagertest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"sync"
	"testing"

	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
)

const project = "projects/test-project"

func createSecret(tb testing.TB, c *secretmanager.Client, id string) string {
	tb.Helper()
	s, err := c.CreateSecret(context.Background(), &secretmanagerpb.CreateSecretRequest{
		Parent:   project,
		SecretId: id,
		Secret:   &secretmanagerpb.Secret{},
	})
	if err != nil {
		tb.Fatalf("CreateSecret(%s): %v", id, err)
	}
	return s.Name
}

func addVersion(tb testing.TB, c *secretmanager.Client, secret string, data string) *secretmanagerpb.SecretVersion {
	tb.Helper()
	v, err := c.AddSecretVersion(context.Background(), &secretmanagerpb.AddSecretVersionRequest{
		Parent:  secret,
		Payload: &secretmanagerpb.SecretPayload{Data: []byte(data)},
	})
	if err != nil {
		tb.Fatalf("AddSecretVersion(%s): %v", secret, err)
	}
	return v
}

func wantCode(tb testing.TB, err error, want codes.Code) {
	tb.Helper()
	if got := status.Code(err); got != want {
		tb.Fatalf("error code = %v (%v), want %v", got, err, want)
	}
}

func TestCreateAndGetSecret(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	name := createSecret(t, c, "db-creds")
	if name != project+"/secrets/db-creds" {
		t.Fatalf("name = %q", name)
	}
	got, err := c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetName() != name || got.GetCreateTime() == nil || !strings.HasPrefix(got.GetEtag(), `"`) {
		t.Fatalf("GetSecret = %v", got)
	}

	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"duplicate", func() error {
			_, err := c.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{Parent: project, SecretId: "db-creds", Secret: &secretmanagerpb.Secret{}})
			return err
		}, codes.AlreadyExists},
		{"invalid id", func() error {
			_, err := c.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{Parent: project, SecretId: "bad/id", Secret: &secretmanagerpb.Secret{}})
			return err
		}, codes.InvalidArgument},
		{"invalid alias", func() error {
			_, err := c.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{Parent: project, SecretId: "a", Secret: &secretmanagerpb.Secret{VersionAliases: map[string]int64{"latest": 1}}})
			return err
		}, codes.InvalidArgument},
		{"get unknown", func() error {
			_, err := c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: project + "/secrets/nope"})
			return err
		}, codes.NotFound},
		{"get malformed", func() error {
			_, err := c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: "secrets/nope"})
			return err
		}, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.want) })
	}
}

func TestAddSecretVersion(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	crc := func(b []byte) *int64 { v := int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))); return &v }
	wrong := int64(12345)

	tests := []struct {
		name        string
		parent      string
		data        []byte
		crc         *int64
		want        codes.Code
		wantVersion string
		wantCRCFlag bool
	}{
		{"first is 1", secret, []byte("one"), nil, codes.OK, secret + "/versions/1", false},
		{"with good crc", secret, []byte("two"), crc([]byte("two")), codes.OK, secret + "/versions/2", true},
		{"exactly 64 KiB", secret, bytes.Repeat([]byte("x"), 64*1024), nil, codes.OK, secret + "/versions/3", false},
		{"over 64 KiB", secret, bytes.Repeat([]byte("x"), 64*1024+1), nil, codes.InvalidArgument, "", false},
		{"bad crc", secret, []byte("four"), &wrong, codes.InvalidArgument, "", false},
		{"unknown secret", project + "/secrets/nope", []byte("x"), nil, codes.NotFound, "", false},
		{"after failures the number continues", secret, []byte("four"), nil, codes.OK, secret + "/versions/4", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := c.AddSecretVersion(ctx, &secretmanagerpb.AddSecretVersionRequest{
				Parent:  tc.parent,
				Payload: &secretmanagerpb.SecretPayload{Data: tc.data, DataCrc32C: tc.crc},
			})
			wantCode(t, err, tc.want)
			if err != nil {
				return
			}
			if v.GetName() != tc.wantVersion || v.GetState() != secretmanagerpb.SecretVersion_ENABLED ||
				v.GetClientSpecifiedPayloadChecksum() != tc.wantCRCFlag || v.GetEtag() == "" || v.GetCreateTime() == nil {
				t.Fatalf("version = %v", v)
			}
		})
	}
}

func TestAccessSecretVersion(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	empty := createSecret(t, c, "empty")
	for i := 1; i <= 3; i++ {
		addVersion(t, c, secret, fmt.Sprintf("payload-%d", i))
	}

	access := func(name string) (*secretmanagerpb.AccessSecretVersionResponse, error) {
		return c.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: name})
	}
	check := func(t *testing.T, name, wantName, wantData string) {
		t.Helper()
		r, err := access(name)
		if err != nil {
			t.Fatalf("access %s: %v", name, err)
		}
		if r.GetName() != wantName || string(r.GetPayload().GetData()) != wantData {
			t.Fatalf("access %s = %s %q, want %s %q", name, r.GetName(), r.GetPayload().GetData(), wantName, wantData)
		}
		sum := int64(crc32.Checksum(r.GetPayload().GetData(), crc32.MakeTable(crc32.Castagnoli)))
		if r.GetPayload().DataCrc32C == nil || *r.GetPayload().DataCrc32C != sum {
			t.Fatalf("access %s: crc32c = %v, want %d", name, r.GetPayload().DataCrc32C, sum)
		}
	}

	t.Run("by number", func(t *testing.T) { check(t, secret+"/versions/2", secret+"/versions/2", "payload-2") })
	t.Run("latest resolves to newest", func(t *testing.T) { check(t, secret+"/versions/latest", secret+"/versions/3", "payload-3") })

	errCases := []struct {
		name string
		ver  string
		want codes.Code
	}{
		{"unknown version", secret + "/versions/9", codes.NotFound},
		{"version zero", secret + "/versions/0", codes.InvalidArgument},
		{"unknown alias", secret + "/versions/current", codes.NotFound},
		{"unknown secret", project + "/secrets/nope/versions/1", codes.NotFound},
		{"latest without versions", empty + "/versions/latest", codes.NotFound},
		{"malformed", secret, codes.InvalidArgument},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := access(tc.ver)
			wantCode(t, err, tc.want)
		})
	}

	t.Run("disabled newest makes latest fail like production", func(t *testing.T) {
		if _, err := c.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: secret + "/versions/3"}); err != nil {
			t.Fatal(err)
		}
		_, err := access(secret + "/versions/3")
		wantCode(t, err, codes.FailedPrecondition)
		_, err = access(secret + "/versions/latest")
		wantCode(t, err, codes.FailedPrecondition)
		if !strings.Contains(err.Error(), "DISABLED") {
			t.Fatalf("error %q does not name the state", err)
		}
		if _, err := c.EnableSecretVersion(ctx, &secretmanagerpb.EnableSecretVersionRequest{Name: secret + "/versions/3"}); err != nil {
			t.Fatal(err)
		}
		check(t, secret+"/versions/latest", secret+"/versions/3", "payload-3")
	})

	t.Run("destroyed", func(t *testing.T) {
		v, err := c.DestroySecretVersion(ctx, &secretmanagerpb.DestroySecretVersionRequest{Name: secret + "/versions/1"})
		if err != nil {
			t.Fatal(err)
		}
		if v.GetState() != secretmanagerpb.SecretVersion_DESTROYED || v.GetDestroyTime() == nil {
			t.Fatalf("destroyed version = %v", v)
		}
		_, err = access(secret + "/versions/1")
		wantCode(t, err, codes.FailedPrecondition)
		_, err = c.EnableSecretVersion(ctx, &secretmanagerpb.EnableSecretVersionRequest{Name: secret + "/versions/1"})
		wantCode(t, err, codes.FailedPrecondition)
	})
}

func TestVersionAliases(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	s, err := c.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{
		Parent: project, SecretId: "aliased",
		Secret: &secretmanagerpb.Secret{VersionAliases: map[string]int64{"current": 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	addVersion(t, c, s.Name, "v1")
	addVersion(t, c, s.Name, "v2")
	r, err := c.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: s.Name + "/versions/current"})
	if err != nil || string(r.Payload.Data) != "v1" || r.Name != s.Name+"/versions/1" {
		t.Fatalf("access alias = %v, %v", r, err)
	}

	_, err = c.UpdateSecret(ctx, &secretmanagerpb.UpdateSecretRequest{
		Secret:     &secretmanagerpb.Secret{Name: s.Name, VersionAliases: map[string]int64{"current": 2}, Etag: `"stale"`},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"version_aliases"}},
	})
	wantCode(t, err, codes.FailedPrecondition)

	u, err := c.UpdateSecret(ctx, &secretmanagerpb.UpdateSecretRequest{
		Secret:     &secretmanagerpb.Secret{Name: s.Name, VersionAliases: map[string]int64{"current": 2}, Etag: s.Etag},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"version_aliases"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if u.Etag == s.Etag {
		t.Fatal("UpdateSecret kept the etag")
	}
	v, err := c.GetSecretVersion(ctx, &secretmanagerpb.GetSecretVersionRequest{Name: s.Name + "/versions/current"})
	if err != nil || v.Name != s.Name+"/versions/2" {
		t.Fatalf("GetSecretVersion(current) = %v, %v", v, err)
	}
}

func TestListSecretVersions(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	for i := 1; i <= 5; i++ {
		addVersion(t, c, secret, fmt.Sprint(i))
	}
	if _, err := c.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: secret + "/versions/4"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DestroySecretVersion(ctx, &secretmanagerpb.DestroySecretVersionRequest{Name: secret + "/versions/2"}); err != nil {
		t.Fatal(err)
	}

	list := func(t *testing.T, filter string) []string {
		t.Helper()
		// A page size below the count makes the client follow page tokens.
		it := c.ListSecretVersions(ctx, &secretmanagerpb.ListSecretVersionsRequest{Parent: secret, PageSize: 2, Filter: filter})
		var got []string
		for {
			v, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return got
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%s:%s", v.Name[strings.LastIndex(v.Name, "/")+1:], v.State))
		}
	}
	tests := []struct {
		filter string
		want   string
	}{
		{"", "5:ENABLED 4:DISABLED 3:ENABLED 2:DESTROYED 1:ENABLED"},
		{"state:ENABLED", "5:ENABLED 3:ENABLED 1:ENABLED"},
		{"state:DISABLED", "4:DISABLED"},
	}
	for _, tc := range tests {
		t.Run("filter="+tc.filter, func(t *testing.T) {
			if got := strings.Join(list(t, tc.filter), " "); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	t.Run("unknown secret", func(t *testing.T) {
		_, err := c.ListSecretVersions(ctx, &secretmanagerpb.ListSecretVersionsRequest{Parent: project + "/secrets/nope"}).Next()
		wantCode(t, err, codes.NotFound)
	})
}

func TestEtags(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	v1 := addVersion(t, c, secret, "x")
	if !strings.HasPrefix(v1.Etag, `"`) || !strings.HasSuffix(v1.Etag, `"`) {
		t.Fatalf("etag %q is not quoted", v1.Etag)
	}

	// A no-op enable still changes the etag, so a disable based on the etag
	// read before it must fail: that is the documented concurrency guard.
	enabled, err := c.EnableSecretVersion(ctx, &secretmanagerpb.EnableSecretVersionRequest{Name: v1.Name})
	if err != nil {
		t.Fatal(err)
	}
	if enabled.Etag == v1.Etag {
		t.Fatal("no-op enable kept the etag")
	}
	_, err = c.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: v1.Name, Etag: v1.Etag})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = c.DestroySecretVersion(ctx, &secretmanagerpb.DestroySecretVersionRequest{Name: v1.Name, Etag: v1.Etag})
	wantCode(t, err, codes.FailedPrecondition)

	disabled, err := c.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: v1.Name, Etag: enabled.Etag})
	if err != nil {
		t.Fatal(err)
	}
	if disabled.State != secretmanagerpb.SecretVersion_DISABLED || disabled.Etag == enabled.Etag {
		t.Fatalf("disabled = %v", disabled)
	}
	got, err := c.GetSecretVersion(ctx, &secretmanagerpb.GetSecretVersionRequest{Name: v1.Name})
	if err != nil || got.Etag != disabled.Etag || got.State != secretmanagerpb.SecretVersion_DISABLED {
		t.Fatalf("GetSecretVersion = %v, %v", got, err)
	}
	// The secret's own etag is untouched by version changes.
	s, err := c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: secret})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSecret(ctx, &secretmanagerpb.DeleteSecretRequest{Name: secret, Etag: `"0"`}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteSecret with stale etag: %v", err)
	}
	if err := c.DeleteSecret(ctx, &secretmanagerpb.DeleteSecretRequest{Name: secret, Etag: s.Etag}); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: secret})
	wantCode(t, err, codes.NotFound)
}

func TestFaultInjection(t *testing.T) {
	ctx := context.Background()
	srv, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	addVersion(t, c, secret, "x")
	latest := &secretmanagerpb.AccessSecretVersionRequest{Name: secret + "/versions/latest"}

	srv.FailNext("AccessSecretVersion", status.Error(codes.PermissionDenied, "injected"))
	_, err := c.AccessSecretVersion(ctx, latest)
	wantCode(t, err, codes.PermissionDenied)
	if _, err := c.AccessSecretVersion(ctx, latest); err != nil {
		t.Fatalf("second access after one injected failure: %v", err)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 2 {
		t.Fatalf("Calls = %d, want 2", n)
	}

	srv.SetIntercept(func(method string) error {
		if method == "GetSecret" {
			return status.Error(codes.Internal, "hooked")
		}
		return nil
	})
	_, err = c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: secret})
	wantCode(t, err, codes.Internal)
	if _, err := c.AccessSecretVersion(ctx, latest); err != nil {
		t.Fatalf("hook must not affect other methods: %v", err)
	}
	srv.SetIntercept(nil)
	if _, err := c.GetSecret(ctx, &secretmanagerpb.GetSecretRequest{Name: secret}); err != nil {
		t.Fatalf("after removing the hook: %v", err)
	}
}

func TestConcurrentAdds(t *testing.T) {
	ctx := context.Background()
	_, c := secretmanagertest.Start(t)
	secret := createSecret(t, c, "s")
	const n = 20
	var wg sync.WaitGroup
	names := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			v, err := c.AddSecretVersion(ctx, &secretmanagerpb.AddSecretVersionRequest{
				Parent: secret, Payload: &secretmanagerpb.SecretPayload{Data: []byte(fmt.Sprint(i))},
			})
			if err != nil {
				t.Error(err)
				return
			}
			names <- v.Name
		})
	}
	wg.Wait()
	close(names)
	seen := map[string]bool{}
	for name := range names {
		seen[name] = true
	}
	for i := 1; i <= n; i++ {
		if !seen[fmt.Sprintf("%s/versions/%d", secret, i)] {
			t.Fatalf("version %d missing; got %v", i, seen)
		}
	}
}

func TestListenAndPut(t *testing.T) {
	ctx := context.Background()
	srv, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	name, err := srv.Put(project+"/secrets/seeded", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if name != project+"/secrets/seeded/versions/1" {
		t.Fatalf("Put = %q", name)
	}
	if _, err := srv.Put("not-a-secret", nil); err == nil {
		t.Fatal("Put accepted an invalid name")
	}
	c, err := secretmanagertest.NewClient(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: project + "/secrets/seeded/versions/latest"})
	if err != nil || string(r.Payload.Data) != "hello" {
		t.Fatalf("access seeded = %v, %v", r, err)
	}
}
