// Package secretmanagertest is an in-process Secret Manager: a gRPC server
// implementing the parts of google.cloud.secretmanager.v1 this project uses,
// reached through the real Go client. Secret Manager has no emulator, and a
// fake behind the real client exercises the same request/response types and
// status codes as production.
//
// Behaviour follows the real service where this project depends on it:
//   - versions are numbered from 1; payloads are at most 64 KiB; an optional
//     CRC32C is verified and a checksum is always returned on access;
//   - "latest" is an alias of the most recently created version whatever its
//     state, so accessing it when that version is DISABLED or DESTROYED fails
//     with FailedPrecondition, as production does (it does not skip to an
//     older enabled version);
//   - version aliases set on the secret work in Get/AccessSecretVersion;
//   - every create or state change (even a no-op one) gives the resource a new
//     quoted etag; a request carrying a stale etag fails with
//     FailedPrecondition, as documented at
//     https://cloud.google.com/secret-manager/docs/etags.
//
// Differences: names keep the project ID given by the caller (production
// answers with the project number); IAM, replication, expiry, topics and
// rotation schedules are stored but have no effect; ListSecretVersions only
// understands the filter "state:<STATE>".
package secretmanagertest

import (
	"context"
	"fmt"
	"hash/crc32"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// MaxPayloadBytes is the largest secret payload Secret Manager accepts.
const MaxPayloadBytes = 64 * 1024

// defaultPageSize is used when a List request leaves page_size at 0; small on
// purpose so that callers' pagination is exercised.
const defaultPageSize = 25

var (
	crcTable    = crc32.MakeTable(crc32.Castagnoli)
	secretIDRe  = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,255}$`)
	aliasRe     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_-]{0,62}$`)
	projectRe   = regexp.MustCompile(`^projects/([^/]+)$`)
	secretRe    = regexp.MustCompile(`^projects/([^/]+)/secrets/([^/]+)$`)
	versionRe   = regexp.MustCompile(`^(projects/[^/]+/secrets/[^/]+)/versions/([^/]+)$`)
	stateFilter = regexp.MustCompile(`^state\s*[:=]\s*([A-Z_]+)$`)
)

// Server is an in-memory SecretManagerServiceServer. The zero value is not
// usable; create one with NewServer. All methods are safe for concurrent use.
type Server struct {
	secretmanagerpb.UnimplementedSecretManagerServiceServer

	gs *grpc.Server

	mu        sync.Mutex
	secrets   map[string]*secret // by resource name projects/P/secrets/S
	calls     map[string]int
	failNext  map[string][]error
	intercept func(method string) error
	etagSeq   uint64
}

type secret struct {
	pb       *secretmanagerpb.Secret
	versions []*version // versions[i] is version i+1
}

type version struct {
	pb   *secretmanagerpb.SecretVersion
	data []byte
	crc  uint32
}

// NewServer returns an empty server with its gRPC server ready to Serve.
func NewServer() *Server {
	s := &Server{
		secrets:  make(map[string]*secret),
		calls:    make(map[string]int),
		failNext: make(map[string][]error),
		etagSeq:  uint64(time.Now().UnixMicro()),
	}
	s.gs = grpc.NewServer(grpc.UnaryInterceptor(s.interceptor))
	secretmanagerpb.RegisterSecretManagerServiceServer(s.gs, s)
	return s
}

// Serve accepts gRPC connections on lis until Stop is called. It blocks.
func (s *Server) Serve(lis net.Listener) error {
	return s.gs.Serve(lis)
}

// Stop closes the listeners and all connections at once.
func (s *Server) Stop() {
	s.gs.Stop()
}

// Listen serves on addr (e.g. "127.0.0.1:0") in a background goroutine and
// returns the server and the address it listens on. It is meant for the local
// demo stack as much as for tests; call Stop when done.
func Listen(addr string) (*Server, string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("secretmanagertest: listen: %w", err)
	}
	s := NewServer()
	go func() { _ = s.Serve(lis) }()
	return s, lis.Addr().String(), nil
}

// FailNext makes the next call of method (the short RPC name, e.g.
// "AccessSecretVersion") fail with err instead of reaching the fake. Calls
// queue: FailNext twice fails the next two calls. Use a status error (from
// google.golang.org/grpc/status) to choose the code the client sees. Beware
// that the client retries AccessSecretVersion on Unavailable and
// ResourceExhausted with a backoff of seconds.
func (s *Server) FailNext(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext[method] = append(s.failNext[method], err)
}

// SetIntercept installs fn, called before every RPC with its short name; a
// non-nil error is returned to the client instead of running the RPC. nil
// removes the hook. FailNext errors take precedence.
func (s *Server) SetIntercept(fn func(method string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.intercept = fn
}

// Calls reports how many times method (short RPC name) has been called,
// including calls failed by FailNext or the intercept hook.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// Put creates the secret name (projects/P/secrets/S) if it does not exist and
// adds payload as a new version, returning the version's resource name. It
// lets the demo stack and tests seed data without a client.
func (s *Server) Put(name string, payload []byte) (string, error) {
	m := secretRe.FindStringSubmatch(name)
	if m == nil || !secretIDRe.MatchString(m[2]) {
		return "", fmt.Errorf("secretmanagertest: invalid secret name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.secrets[name]; !ok {
		s.secrets[name] = &secret{pb: s.newSecretPB(name, nil)}
	}
	v, err := s.addVersionLocked(name, &secretmanagerpb.SecretPayload{Data: payload})
	if err != nil {
		return "", err
	}
	return v.Name, nil
}

func (s *Server) interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	s.mu.Lock()
	s.calls[method]++
	var injected error
	if q := s.failNext[method]; len(q) > 0 {
		injected, s.failNext[method] = q[0], q[1:]
	}
	hook := s.intercept
	s.mu.Unlock()
	if injected != nil {
		return nil, injected
	}
	if hook != nil {
		if err := hook(method); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// nextEtag must be called with s.mu held. Etags are quoted, as AIP-154 and
// the real service have them.
func (s *Server) nextEtag() string {
	s.etagSeq++
	return `"` + strconv.FormatUint(s.etagSeq, 16) + `"`
}

func (s *Server) newSecretPB(name string, in *secretmanagerpb.Secret) *secretmanagerpb.Secret {
	pb := &secretmanagerpb.Secret{}
	if in != nil {
		pb = proto.Clone(in).(*secretmanagerpb.Secret)
	}
	pb.Name = name
	pb.CreateTime = timestamppb.Now()
	pb.Etag = s.nextEtag()
	if pb.Replication == nil {
		pb.Replication = &secretmanagerpb.Replication{
			Replication: &secretmanagerpb.Replication_Automatic_{Automatic: &secretmanagerpb.Replication_Automatic{}},
		}
	}
	return pb
}

func validateAliases(aliases map[string]int64) error {
	for a, v := range aliases {
		if !aliasRe.MatchString(a) || a == "latest" || a == "NEW" {
			return status.Errorf(codes.InvalidArgument, "invalid version alias %q", a)
		}
		if v < 1 {
			return status.Errorf(codes.InvalidArgument, "version alias %q must point to a version number >= 1, got %d", a, v)
		}
	}
	return nil
}

// CreateSecret implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) CreateSecret(_ context.Context, req *secretmanagerpb.CreateSecretRequest) (*secretmanagerpb.Secret, error) {
	if !projectRe.MatchString(req.GetParent()) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid parent %q, want projects/*", req.GetParent())
	}
	if !secretIDRe.MatchString(req.GetSecretId()) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid secret_id %q", req.GetSecretId())
	}
	if err := validateAliases(req.GetSecret().GetVersionAliases()); err != nil {
		return nil, err
	}
	name := req.GetParent() + "/secrets/" + req.GetSecretId()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.secrets[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "Secret [%s] already exists.", name)
	}
	sec := &secret{pb: s.newSecretPB(name, req.GetSecret())}
	s.secrets[name] = sec
	return proto.Clone(sec.pb).(*secretmanagerpb.Secret), nil
}

// GetSecret implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) GetSecret(_ context.Context, req *secretmanagerpb.GetSecretRequest) (*secretmanagerpb.Secret, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.secretLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return proto.Clone(sec.pb).(*secretmanagerpb.Secret), nil
}

// ListSecrets implements secretmanagerpb.SecretManagerServiceServer, without
// filter support.
func (s *Server) ListSecrets(_ context.Context, req *secretmanagerpb.ListSecretsRequest) (*secretmanagerpb.ListSecretsResponse, error) {
	if !projectRe.MatchString(req.GetParent()) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid parent %q, want projects/*", req.GetParent())
	}
	if req.GetFilter() != "" {
		return nil, status.Errorf(codes.Unimplemented, "secretmanagertest: ListSecrets filters are not supported")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []*secretmanagerpb.Secret
	for name, sec := range s.secrets {
		if strings.HasPrefix(name, req.GetParent()+"/") {
			all = append(all, sec.pb)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	page, next, err := paginate(len(all), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &secretmanagerpb.ListSecretsResponse{NextPageToken: next, TotalSize: int32(len(all))}
	for _, pb := range all[page[0]:page[1]] {
		resp.Secrets = append(resp.Secrets, proto.Clone(pb).(*secretmanagerpb.Secret))
	}
	return resp, nil
}

// UpdateSecret implements secretmanagerpb.SecretManagerServiceServer for the
// mutable fields labels, annotations, version_aliases, topics and rotation.
func (s *Server) UpdateSecret(_ context.Context, req *secretmanagerpb.UpdateSecretRequest) (*secretmanagerpb.Secret, error) {
	in := req.GetSecret()
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, status.Error(codes.InvalidArgument, "update_mask is required")
	}
	if err := validateAliases(in.GetVersionAliases()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.secretLocked(in.GetName())
	if err != nil {
		return nil, err
	}
	if in.GetEtag() != "" && in.GetEtag() != sec.pb.Etag {
		return nil, etagMismatch(in.GetName())
	}
	updated := proto.Clone(sec.pb).(*secretmanagerpb.Secret)
	for _, p := range paths {
		switch p {
		case "labels":
			updated.Labels = in.GetLabels()
		case "annotations":
			updated.Annotations = in.GetAnnotations()
		case "version_aliases":
			updated.VersionAliases = in.GetVersionAliases()
		case "topics":
			updated.Topics = in.GetTopics()
		case "rotation":
			updated.Rotation = in.GetRotation()
		default:
			return nil, status.Errorf(codes.InvalidArgument, "secretmanagertest: update_mask path %q is not supported", p)
		}
	}
	updated.Etag = s.nextEtag()
	sec.pb = updated
	return proto.Clone(updated).(*secretmanagerpb.Secret), nil
}

// DeleteSecret implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) DeleteSecret(_ context.Context, req *secretmanagerpb.DeleteSecretRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.secretLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	if req.GetEtag() != "" && req.GetEtag() != sec.pb.Etag {
		return nil, etagMismatch(req.GetName())
	}
	delete(s.secrets, req.GetName())
	return &emptypb.Empty{}, nil
}

// AddSecretVersion implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) AddSecretVersion(_ context.Context, req *secretmanagerpb.AddSecretVersionRequest) (*secretmanagerpb.SecretVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addVersionLocked(req.GetParent(), req.GetPayload())
}

func (s *Server) addVersionLocked(parent string, payload *secretmanagerpb.SecretPayload) (*secretmanagerpb.SecretVersion, error) {
	sec, err := s.secretLocked(parent)
	if err != nil {
		return nil, err
	}
	if payload == nil {
		return nil, status.Error(codes.InvalidArgument, "payload is required")
	}
	if len(payload.Data) > MaxPayloadBytes {
		return nil, status.Errorf(codes.InvalidArgument, "payload is %d bytes, the limit is %d", len(payload.Data), MaxPayloadBytes)
	}
	sum := crc32.Checksum(payload.Data, crcTable)
	if payload.DataCrc32C != nil && uint32(*payload.DataCrc32C) != sum {
		return nil, status.Error(codes.InvalidArgument, "data_crc32c does not match the CRC32C of the payload data")
	}
	n := len(sec.versions) + 1
	v := &version{
		pb: &secretmanagerpb.SecretVersion{
			Name:                           fmt.Sprintf("%s/versions/%d", parent, n),
			CreateTime:                     timestamppb.Now(),
			State:                          secretmanagerpb.SecretVersion_ENABLED,
			Etag:                           s.nextEtag(),
			ClientSpecifiedPayloadChecksum: payload.DataCrc32C != nil,
		},
		data: append([]byte(nil), payload.Data...),
		crc:  sum,
	}
	sec.versions = append(sec.versions, v)
	return proto.Clone(v.pb).(*secretmanagerpb.SecretVersion), nil
}

// AccessSecretVersion implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) AccessSecretVersion(_ context.Context, req *secretmanagerpb.AccessSecretVersionRequest) (*secretmanagerpb.AccessSecretVersionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.versionLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	if st := v.pb.State; st != secretmanagerpb.SecretVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "Secret Version [%s] is in %s state.", v.pb.Name, st)
	}
	crc := int64(v.crc)
	return &secretmanagerpb.AccessSecretVersionResponse{
		Name:    v.pb.Name,
		Payload: &secretmanagerpb.SecretPayload{Data: append([]byte(nil), v.data...), DataCrc32C: &crc},
	}, nil
}

// GetSecretVersion implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) GetSecretVersion(_ context.Context, req *secretmanagerpb.GetSecretVersionRequest) (*secretmanagerpb.SecretVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.versionLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return proto.Clone(v.pb).(*secretmanagerpb.SecretVersion), nil
}

// ListSecretVersions implements secretmanagerpb.SecretManagerServiceServer:
// newest first, with the filter "state:<STATE>" as the only supported one.
func (s *Server) ListSecretVersions(_ context.Context, req *secretmanagerpb.ListSecretVersionsRequest) (*secretmanagerpb.ListSecretVersionsResponse, error) {
	want := secretmanagerpb.SecretVersion_STATE_UNSPECIFIED
	if f := strings.TrimSpace(req.GetFilter()); f != "" {
		m := stateFilter.FindStringSubmatch(f)
		if m == nil {
			return nil, status.Errorf(codes.Unimplemented, "secretmanagertest: only the filter state:<STATE> is supported, got %q", f)
		}
		st, ok := secretmanagerpb.SecretVersion_State_value[m[1]]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "unknown state %q in filter", m[1])
		}
		want = secretmanagerpb.SecretVersion_State(st)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.secretLocked(req.GetParent())
	if err != nil {
		return nil, err
	}
	var all []*version
	for i := len(sec.versions) - 1; i >= 0; i-- {
		if v := sec.versions[i]; want == secretmanagerpb.SecretVersion_STATE_UNSPECIFIED || v.pb.State == want {
			all = append(all, v)
		}
	}
	page, next, err := paginate(len(all), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &secretmanagerpb.ListSecretVersionsResponse{NextPageToken: next, TotalSize: int32(len(all))}
	for _, v := range all[page[0]:page[1]] {
		resp.Versions = append(resp.Versions, proto.Clone(v.pb).(*secretmanagerpb.SecretVersion))
	}
	return resp, nil
}

// DisableSecretVersion implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) DisableSecretVersion(_ context.Context, req *secretmanagerpb.DisableSecretVersionRequest) (*secretmanagerpb.SecretVersion, error) {
	return s.setState(req.GetName(), req.GetEtag(), secretmanagerpb.SecretVersion_DISABLED)
}

// EnableSecretVersion implements secretmanagerpb.SecretManagerServiceServer.
func (s *Server) EnableSecretVersion(_ context.Context, req *secretmanagerpb.EnableSecretVersionRequest) (*secretmanagerpb.SecretVersion, error) {
	return s.setState(req.GetName(), req.GetEtag(), secretmanagerpb.SecretVersion_ENABLED)
}

// DestroySecretVersion implements secretmanagerpb.SecretManagerServiceServer.
// The payload is discarded at once (no delayed destruction).
func (s *Server) DestroySecretVersion(_ context.Context, req *secretmanagerpb.DestroySecretVersionRequest) (*secretmanagerpb.SecretVersion, error) {
	return s.setState(req.GetName(), req.GetEtag(), secretmanagerpb.SecretVersion_DESTROYED)
}

func (s *Server) setState(name, etag string, to secretmanagerpb.SecretVersion_State) (*secretmanagerpb.SecretVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.versionLocked(name)
	if err != nil {
		return nil, err
	}
	if etag != "" && etag != v.pb.Etag {
		return nil, etagMismatch(v.pb.Name)
	}
	if v.pb.State == secretmanagerpb.SecretVersion_DESTROYED {
		return nil, status.Errorf(codes.FailedPrecondition, "Secret Version [%s] is in DESTROYED state.", v.pb.Name)
	}
	// Copy-on-write: responses cloned earlier may still be marshalling.
	pb := proto.Clone(v.pb).(*secretmanagerpb.SecretVersion)
	pb.State = to
	pb.Etag = s.nextEtag()
	if to == secretmanagerpb.SecretVersion_DESTROYED {
		pb.DestroyTime = timestamppb.Now()
		v.data = nil
	}
	v.pb = pb
	return proto.Clone(pb).(*secretmanagerpb.SecretVersion), nil
}

func etagMismatch(name string) error {
	return status.Errorf(codes.FailedPrecondition, "The etag provided in the request does not match the current etag of [%s].", name)
}

func (s *Server) secretLocked(name string) (*secret, error) {
	if !secretRe.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid secret name %q, want projects/*/secrets/*", name)
	}
	sec, ok := s.secrets[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Secret [%s] not found or has no versions.", name)
	}
	return sec, nil
}

// versionLocked resolves a version name whose last segment is a number,
// "latest" or an alias.
func (s *Server) versionLocked(name string) (*version, error) {
	m := versionRe.FindStringSubmatch(name)
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid secret version name %q, want projects/*/secrets/*/versions/*", name)
	}
	sec, err := s.secretLocked(m[1])
	if err != nil {
		return nil, err
	}
	id := m[2]
	var n int64
	switch {
	case id == "latest":
		n = int64(len(sec.versions))
		if n == 0 {
			return nil, status.Errorf(codes.NotFound, "Secret [%s] not found or has no versions.", m[1])
		}
	case id[0] >= '0' && id[0] <= '9':
		n, err = strconv.ParseInt(id, 10, 64)
		if err != nil || n < 1 {
			return nil, status.Errorf(codes.InvalidArgument, "invalid secret version id %q", id)
		}
	case aliasRe.MatchString(id):
		var ok bool
		if n, ok = sec.pb.VersionAliases[id]; !ok {
			return nil, status.Errorf(codes.NotFound, "Secret Version alias [%s] not found on [%s].", id, m[1])
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "invalid secret version id %q", id)
	}
	if n > int64(len(sec.versions)) {
		return nil, status.Errorf(codes.NotFound, "Secret Version [%s/versions/%d] not found.", m[1], n)
	}
	return sec.versions[n-1], nil
}

// paginate returns the [start,end) window of a list of length n and the next
// page token ("" on the last page). Tokens are plain offsets.
func paginate(n int, size int32, token string) ([2]int, string, error) {
	start := 0
	if token != "" {
		t, err := strconv.Atoi(token)
		if err != nil || t < 0 || t > n {
			return [2]int{}, "", status.Errorf(codes.InvalidArgument, "invalid page_token %q", token)
		}
		start = t
	}
	if size < 0 {
		return [2]int{}, "", status.Errorf(codes.InvalidArgument, "page_size must not be negative")
	}
	if size == 0 {
		size = defaultPageSize
	}
	end := min(start+int(size), n)
	next := ""
	if end < n {
		next = strconv.Itoa(end)
	}
	return [2]int{start, end}, next, nil
}
