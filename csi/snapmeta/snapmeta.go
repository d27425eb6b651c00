// Package snapmeta is a change hint source (hint.Source) backed by CSI
// snapshot metadata, Kubernetes' changed block tracking (KEP-3314): when a
// SnapshotMetadataService custom resource (cbt.storage.k8s.io) exists for
// a volume's CSI driver, the driver's csi-snapshot-metadata sidecar lists
// the blocks that differ between two of its snapshots (GetMetadataDelta),
// and a round re-reads only those.
//
// A call asks the service named by the CR (its address, CA bundle and
// audience) with a ServiceAccount token made for that audience
// (TokenRequest), as the KEP's backup clients do; the sidecar authenticates
// the token (TokenReview) and checks that its subject may get
// VolumeSnapshots in the target's namespace (SubjectAccessReview). The
// agent's ServiceAccount needs get on snapshotmetadataservices, create on
// its own serviceaccounts/token, and get on volumesnapshots (see
// deploy/agent/rbac-snapshot-metadata.yaml).
//
// A base snapshot is identified, in HELLO's Image and in BaseImage, by
// Identity: the CSI driver and the snapshot handle of its
// VolumeSnapshotContent, which the storage system never reuses for other
// content.
package snapmeta

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/hint"
)

// Name is the Source's Name.
const Name = "csi-snapshot-metadata"

// SnapshotMetadataServices are the resources of the SnapshotMetadataService
// CRs, in the order they are looked for: v1beta1 (external-snapshot-metadata
// v1.x) and v1alpha1 (v0.x). Both are cluster-scoped, named after the CSI
// driver, with spec.address, spec.audience and spec.caCert.
var SnapshotMetadataServices = []schema.GroupVersionResource{
	{Group: "cbt.storage.k8s.io", Version: "v1beta1", Resource: "snapshotmetadataservices"},
	{Group: "cbt.storage.k8s.io", Version: "v1alpha1", Resource: "snapshotmetadataservices"},
}

// DefaultTokenExpiry is how long the audience-scoped tokens are valid (the
// API server's minimum for TokenRequest).
const DefaultTokenExpiry = 10 * time.Minute

// Identity is the image identity of the CSI snapshot with handle handle of
// driver driver (status.snapshotHandle of its VolumeSnapshotContent):
// "csi:<driver>/<handle>". It is the BaseImage of a Source whose base is
// that snapshot; a round that reads the snapshot names it in HELLO.
func Identity(driver, handle string) string { return "csi:" + driver + "/" + handle }

// SnapshotIdentity is Identity of a ready snapshot.
func SnapshotIdentity(snap csi.SnapshotResult) string { return Identity(snap.Driver, snap.Handle) }

// Options configure a Client.
type Options struct {
	// Kube makes the tokens (TokenRequest) and, if ServiceAccount is not
	// set, finds who the client is (SelfSubjectReview). Required.
	Kube kubernetes.Interface
	// Dynamic reads the SnapshotMetadataService CRs. Required.
	Dynamic dynamic.Interface
	// ServiceAccountNamespace and ServiceAccountName name the
	// ServiceAccount the tokens are made for; both empty: the one Kube
	// authenticates as (the agent's own, in a pod).
	ServiceAccountNamespace, ServiceAccountName string
	// TokenExpiry is the validity of each token; default DefaultTokenExpiry.
	TokenExpiry time.Duration
	// MaxResults is the number of tuples per response to ask for; 0: the
	// driver chooses.
	MaxResults int32
}

// Client asks the snapshot metadata services of a cluster. It is safe for
// concurrent use; one serves every round of an agent.
type Client struct {
	o Options

	mu     sync.Mutex
	saNS   string
	saName string
}

// NewClient checks o and returns a Client.
func NewClient(o Options) (*Client, error) {
	if o.Kube == nil || o.Dynamic == nil {
		return nil, errors.New("snapmeta: Options.Kube and Options.Dynamic are required")
	}
	if (o.ServiceAccountNamespace == "") != (o.ServiceAccountName == "") {
		return nil, errors.New("snapmeta: set both ServiceAccountNamespace and ServiceAccountName, or neither")
	}
	if o.TokenExpiry == 0 {
		o.TokenExpiry = DefaultTokenExpiry
	}
	if o.TokenExpiry < DefaultTokenExpiry {
		return nil, fmt.Errorf("snapmeta: token expiry %s is below the API server's minimum %s", o.TokenExpiry, DefaultTokenExpiry)
	}
	if o.MaxResults < 0 {
		return nil, fmt.Errorf("snapmeta: MaxResults %d", o.MaxResults)
	}
	return &Client{o: o, saNS: o.ServiceAccountNamespace, saName: o.ServiceAccountName}, nil
}

// Service is a SnapshotMetadataService CR's spec.
type Service struct {
	// Driver is the CSI driver, the CR's name.
	Driver string
	// Address is the gRPC endpoint, host:port.
	Address  string
	Audience string
	// CACert is the PEM bundle that signed the service's certificate.
	CACert []byte
}

// Service returns the SnapshotMetadataService of a CSI driver. If there is
// none (or it cannot be read, or is incomplete), the error wraps
// hint.ErrUnavailable and says why.
func (c *Client) Service(ctx context.Context, driver string) (*Service, error) {
	var u *unstructured.Unstructured
	var err error
	for _, gvr := range SnapshotMetadataServices {
		u, err = c.o.Dynamic.Resource(gvr).Get(ctx, driver, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			break
		}
	}
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case apierrors.IsNotFound(err):
		return nil, hint.Unavailable("no SnapshotMetadataService (cbt.storage.k8s.io) for CSI driver %s: the driver does not offer changed block tracking", driver)
	case apierrors.IsForbidden(err):
		return nil, hint.Unavailable("read the SnapshotMetadataService of CSI driver %s: %v (grant get on snapshotmetadataservices.cbt.storage.k8s.io)", driver, err)
	case err != nil:
		return nil, hint.Unavailable("read the SnapshotMetadataService of CSI driver %s: %v", driver, err)
	}
	s := &Service{Driver: driver}
	s.Address, _, _ = unstructured.NestedString(u.Object, "spec", "address")
	s.Audience, _, _ = unstructured.NestedString(u.Object, "spec", "audience")
	ca, _, _ := unstructured.NestedString(u.Object, "spec", "caCert") // base64 (format: byte)
	if b, err := base64.StdEncoding.DecodeString(ca); err == nil {
		s.CACert = b
	}
	if s.Address == "" || s.Audience == "" || len(s.CACert) == 0 {
		return nil, hint.Unavailable("SnapshotMetadataService %s (%s) lacks spec.address, spec.audience or a base64 spec.caCert", driver, u.GetAPIVersion())
	}
	return s, nil
}

// serviceAccount returns the ServiceAccount the tokens are made for.
func (c *Client) serviceAccount(ctx context.Context) (namespace, name string, err error) {
	c.mu.Lock()
	ns, n := c.saNS, c.saName
	c.mu.Unlock()
	if n != "" {
		return ns, n, nil
	}
	ssr, err := c.o.Kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("find the agent's ServiceAccount (SelfSubjectReview): %w", err)
	}
	user := ssr.Status.UserInfo.Username
	f := strings.Split(user, ":")
	if len(f) != 4 || f[0] != "system" || f[1] != "serviceaccount" || f[2] == "" || f[3] == "" {
		return "", "", fmt.Errorf("the agent runs as %q, not a ServiceAccount: name one (snapmeta.Options.ServiceAccountName) to make tokens for", user)
	}
	c.mu.Lock()
	c.saNS, c.saName = f[2], f[3]
	c.mu.Unlock()
	return f[2], f[3], nil
}

// token makes a token of the client's ServiceAccount for audience.
func (c *Client) token(ctx context.Context, audience string) (string, error) {
	ns, name, err := c.serviceAccount(ctx)
	if err != nil {
		return "", err
	}
	secs := int64(c.o.TokenExpiry / time.Second)
	tr, err := c.o.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of ServiceAccount %s/%s for audience %q (TokenRequest; grant create on its serviceaccounts/token): %w", ns, name, audience, err)
	}
	return tr.Status.Token, nil
}

// Request names the two snapshots of a delta.
type Request struct {
	// Driver is the CSI driver of both snapshots.
	Driver string
	// BaseHandle is the CSI snapshot handle of the base snapshot
	// (status.snapshotHandle of its VolumeSnapshotContent), the one the
	// receiver's committed generation was read from.
	BaseHandle string
	// Namespace and Target name the new VolumeSnapshot; it must be ready.
	Namespace, Target string
}

// Source returns the hint.Source of the changes from r's base snapshot to
// its target.
func (c *Client) Source(r Request) *Source { return &Source{c: c, r: r} }

// Source is a hint.Source: the blocks the CSI driver reports changed
// between two snapshots of a volume.
type Source struct {
	c *Client
	r Request
}

var _ hint.Source = (*Source)(nil)

// Name implements hint.Source.
func (s *Source) Name() string { return Name }

// BaseImage implements hint.Source: Identity of the base snapshot.
func (s *Source) BaseImage() string { return Identity(s.r.Driver, s.r.BaseHandle) }

// Changed implements hint.Source: GetMetadataDelta from the base snapshot
// to the target. No SnapshotMetadataService for the driver, a service that
// cannot be reached, refuses the token or the caller, or fails, give an
// error wrapping hint.ErrUnavailable with the reason; a malformed answer
// one wrapping hint.ErrInvalid; a cancelled ctx its error.
func (s *Source) Changed(ctx context.Context, newSize uint64) ([]chunk.Extent, error) {
	r := s.r
	if r.Driver == "" || r.BaseHandle == "" || r.Namespace == "" || r.Target == "" {
		return nil, fmt.Errorf("snapmeta: request %+v lacks a driver, base handle, namespace or target", r)
	}
	svc, err := s.c.Service(ctx, r.Driver)
	if err != nil {
		return nil, err
	}
	tok, err := s.c.token(ctx, svc.Audience)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, hint.Unavailable("%v", err)
	}
	return s.delta(ctx, svc, tok, newSize)
}

// delta asks svc for the delta with the token tok.
func (s *Source) delta(ctx context.Context, svc *Service, tok string, newSize uint64) ([]chunk.Extent, error) {
	r := s.r
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(svc.CACert) {
		return nil, hint.Unavailable("SnapshotMetadataService %s: spec.caCert holds no PEM certificate", svc.Driver)
	}
	conn, err := grpc.NewClient(svc.Address, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		return nil, hint.Unavailable("snapshot metadata service of %s at %q: %v", svc.Driver, svc.Address, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if we stop reading early
	stream, err := api.NewSnapshotMetadataClient(conn).GetMetadataDelta(ctx, &api.GetMetadataDeltaRequest{
		SecurityToken:      tok,
		Namespace:          r.Namespace,
		BaseSnapshotId:     r.BaseHandle,
		TargetSnapshotName: r.Target,
		MaxResults:         s.c.o.MaxResults,
	})
	var b blocks
	for err == nil {
		var resp *api.GetMetadataDeltaResponse
		resp, err = stream.Recv()
		if err == nil {
			err = b.add(resp.BlockMetadataType, resp.VolumeCapacityBytes, resp.BlockMetadata)
		}
	}
	switch {
	case err == io.EOF:
	case errors.Is(err, hint.ErrInvalid):
		return nil, fmt.Errorf("snapshot metadata service of %s at %s, delta %s -> %s/%s: %w", svc.Driver, svc.Address, r.BaseHandle, r.Namespace, r.Target, err)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		return nil, s.unavailable(svc, err)
	}
	exts, err := b.extents(newSize)
	if err != nil {
		return nil, fmt.Errorf("snapshot metadata service of %s at %s: %w", svc.Driver, svc.Address, err)
	}
	return exts, nil
}

// unavailable explains a failed GetMetadataDelta.
func (s *Source) unavailable(svc *Service, err error) error {
	st := status.Convert(err)
	msg := strings.TrimSuffix(st.Message(), ": ") // the sidecar's PermissionDenied ends so when RBAC gives no reason
	what := fmt.Sprintf("snapshot metadata service of %s at %s, delta %s -> %s/%s", svc.Driver, svc.Address, s.r.BaseHandle, s.r.Namespace, s.r.Target)
	switch st.Code() {
	case codes.Unauthenticated:
		return hint.Unavailable("%s: the service did not authenticate the token for audience %q (Unauthenticated: %s)", what, svc.Audience, msg)
	case codes.PermissionDenied:
		return hint.Unavailable("%s: the agent may not get VolumeSnapshots in %s (PermissionDenied: %s)", what, s.r.Namespace, msg)
	case codes.Unavailable:
		return hint.Unavailable("%s: unavailable: %s", what, msg)
	}
	return hint.Unavailable("%s: %s: %s", what, st.Code(), msg)
}
