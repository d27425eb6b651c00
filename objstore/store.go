package objstore

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/errkind"
	"github.com/voldelta/voldelta/transport"
)

// Errors a store operation ends with, for callers to branch on (errors.Is).
// None of them is retryable.
var (
	// ErrBadCredentials: the store refused the credentials (AccessDenied,
	// InvalidAccessKeyId, SignatureDoesNotMatch), or none were found.
	ErrBadCredentials = errors.New("bad credentials")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrNotFound: the object (a generation, a chunk) is not in the store.
	ErrNotFound = errors.New("not found in the store")
	// ErrCorrupt: an object in the store does not decode or does not hash
	// to its name.
	ErrCorrupt = errors.New("corrupt object in the store")
	// ErrSourceChanged: a chunk read back for upload does not hash to what
	// the scan found; push from a snapshot.
	ErrSourceChanged = errors.New("source changed while it was read")
)

// failf returns an error that errors.Is kind, with the formatted message.
func failf(kind error, format string, a ...any) error {
	return errkind.Errorf(kind, format, a...)
}

// Clock is the time a push's and a gc's grace-period arithmetic uses
// (PushOptions.Clock, GCOptions.Clock); nil means SystemClock. Tests
// advance a fake one instead of sleeping.
type Clock interface {
	// Now returns the current time: a push measures how long it has been
	// since it read its bases with it.
	Now() time.Time
	// FromStore maps a time the store stamped (an object's modification
	// time, which gc compares with its own marker's) onto this clock.
	FromStore(t time.Time) time.Time
}

// SystemClock is the system's clock, and the store's for its stamps.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// FromStore returns t: the store's clock is the one gc reads.
func (SystemClock) FromStore(t time.Time) time.Time { return t }

func clockOrSystem(c Clock) Clock {
	if c == nil {
		return SystemClock{}
	}
	return c
}

// DefaultGrace is the gc grace period and the time a push has from reading
// its base manifests to writing its own (see the package doc).
const DefaultGrace = 24 * time.Hour

// Retry is the policy for transient failures: up to Attempts tries per
// request, sleeping Base, 2·Base, 4·Base … (at most Max, with ±50% jitter)
// in between.
type Retry struct {
	Attempts int
	Base     time.Duration
	Max      time.Duration
}

// DefaultRetry returns the retry policy used when Config.Retry is zero.
func DefaultRetry() Retry {
	return Retry{Attempts: 8, Base: 200 * time.Millisecond, Max: 15 * time.Second}
}

// DefaultParallel is the number of concurrent requests of a push, pull or
// gc when none is given: one object per chunk makes a WAN's round trips,
// not its bandwidth, the limit for small or well-compressed chunks, and
// S3-compatible stores serve many more requests at once than this.
const DefaultParallel = 32

// Config locates a store.
type Config struct {
	// Endpoint is HOST[:PORT] of the S3 API (see ParseEndpoint); default
	// s3.amazonaws.com.
	Endpoint string
	// Insecure speaks plain HTTP instead of HTTPS.
	Insecure bool
	// Bucket and Prefix (see ParseStoreURL); Prefix may be empty.
	Bucket, Prefix string
	// Region; empty asks the store (or AWS_REGION).
	Region string
	// Creds; nil reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
	// AWS_SESSION_TOKEN), then the shared credentials file
	// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
	// AWS_PROFILE or "default").
	Creds *credentials.Credentials
	// Transport; nil uses minio-go's default. Tests wrap it to inject faults.
	Transport http.RoundTripper
	// RootCAs, if set, are the CAs trusted for an HTTPS endpoint instead
	// of the system's (a private CA); ignored with Transport.
	RootCAs *x509.CertPool
	// BandwidthLimit caps the bytes per second written to the store, over
	// all connections; 0: unlimited. Ignored with Transport.
	BandwidthLimit float64
	// Retry; zero uses DefaultRetry.
	Retry Retry
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// Store is an open object store. It is safe for concurrent use.
type Store struct {
	cl     *minio.Client
	core   minio.Core
	bucket string
	prefix string // "" or ends in "/"
	where  string // s3://bucket/prefix at endpoint, for messages
	retry  Retry
	log    *slog.Logger

	retries atomic.Uint64 // transient failures retried
}

// ParseStoreURL splits s3://BUCKET[/PREFIX] into its bucket and prefix
// (without leading or trailing slashes).
func ParseStoreURL(s string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return "", "", fmt.Errorf("store %q: want s3://BUCKET/PREFIX", s)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	prefix = strings.Trim(prefix, "/")
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return "", "", fmt.Errorf("store %q: bucket %q: %w", s, bucket, err)
	}
	if strings.Contains(prefix, "//") {
		return "", "", fmt.Errorf("store %q: empty path element in the prefix", s)
	}
	return bucket, prefix, nil
}

// ParseEndpoint accepts HOST:PORT, HOST, or a URL http://HOST[:PORT] or
// https://HOST[:PORT] (as AWS_ENDPOINT_URL holds) and returns HOST[:PORT]
// and whether to use plain HTTP. A URL's scheme must agree with insecure:
// plain HTTP is used only when asked for.
func ParseEndpoint(s string, insecure bool) (string, error) {
	host := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("endpoint %q: %w", s, err)
		}
		switch {
		case u.Scheme == "http" && !insecure:
			return "", fmt.Errorf("endpoint %q is plain HTTP: pass --insecure to allow it", s)
		case u.Scheme == "https" && insecure:
			return "", fmt.Errorf("endpoint %q is HTTPS but --insecure asks for plain HTTP", s)
		case u.Scheme != "http" && u.Scheme != "https":
			return "", fmt.Errorf("endpoint %q: scheme %q, want http or https", s, u.Scheme)
		case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
			return "", fmt.Errorf("endpoint %q: want only a scheme, host and port", s)
		}
		host = u.Host
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return "", fmt.Errorf("endpoint %q: want HOST:PORT", s)
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || h == "" {
			return "", fmt.Errorf("endpoint %q: bad port", s)
		}
	}
	return host, nil
}

// DefaultCreds returns the credentials chain Config.Creds defaults to.
func DefaultCreds() *credentials.Credentials {
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	})
}

// Open connects to the store and checks that the credentials are accepted
// and the bucket exists.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = "s3.amazonaws.com"
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("bucket %q: %w", cfg.Bucket, err)
	}
	if cfg.Creds == nil {
		cfg.Creds = DefaultCreds()
	}
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_REGION")
	}
	if cfg.Retry == (Retry{}) {
		cfg.Retry = DefaultRetry()
	}
	if cfg.Retry.Attempts < 1 {
		cfg.Retry.Attempts = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	scheme := "https"
	if cfg.Insecure {
		scheme = "http"
	}
	s := &Store{bucket: cfg.Bucket, retry: cfg.Retry, log: cfg.Logger,
		where: fmt.Sprintf("s3://%s/%s at %s://%s", cfg.Bucket, cfg.Prefix, scheme, cfg.Endpoint)}
	if p := strings.Trim(cfg.Prefix, "/"); p != "" {
		s.prefix = p + "/"
	}
	v, err := cfg.Creds.GetWithContext(&credentials.CredContext{})
	if err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("%w: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in the shared credentials file (~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE)", ErrBadCredentials)
	}
	tr := cfg.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(!cfg.Insecure)
		if err != nil {
			return nil, err
		}
		t.MaxIdleConnsPerHost = 64
		if cfg.RootCAs != nil && t.TLSClientConfig != nil {
			t.TLSClientConfig.RootCAs = cfg.RootCAs
		}
		if p := transport.NewPacer(cfg.BandwidthLimit); p != nil {
			dial := t.DialContext
			t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return p.Conn(c), nil
			}
		}
		tr = t
	}
	// Retries are ours (Retry), with our classification of what is
	// transient; minio-go's own would multiply with them.
	s.cl, err = minio.New(cfg.Endpoint, &minio.Options{Creds: cfg.Creds, Secure: !cfg.Insecure,
		Transport: tr, Region: cfg.Region, MaxRetries: 1})
	if err != nil {
		return nil, fmt.Errorf("store endpoint %q: %w", cfg.Endpoint, err)
	}
	s.core = minio.Core{Client: s.cl}
	var ok bool
	err = s.do(ctx, "check bucket", func(ctx context.Context) error {
		var err error
		ok, err = s.cl.BucketExists(ctx, s.bucket)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, s.noBucket()
	}
	return s, nil
}

// String names the store for messages and logs.
func (s *Store) String() string { return s.where }

// Retries returns how many transient failures were retried so far.
func (s *Store) Retries() uint64 { return s.retries.Load() }

// Object names.

func (s *Store) chunkKey(id chunk.ID) string {
	h := id.String()
	return s.prefix + "chunks/" + h[:2] + "/" + h
}

func (s *Store) chunksPrefix() string { return s.prefix + "chunks/" }

// parseChunkKey returns the ID a chunks/ object is named by.
func (s *Store) parseChunkKey(key string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, s.chunksPrefix())
	if !ok || len(rest) != 2+1+64 || rest[2] != '/' || rest[:2] != rest[3:5] {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(rest[3:])
	if err != nil || s.chunkKey(id) != key { // e.g. upper-case hex: not an object voldelta wrote
		return chunk.ID{}, false
	}
	return id, true
}

func (s *Store) manifestsPrefix() string { return s.prefix + "manifests/" }

func (s *Store) manifestKey(volume string, gen uint64) string {
	return fmt.Sprintf("%s%s/%020d", s.manifestsPrefix(), volume, gen)
}

func (s *Store) trashPrefix() string { return s.prefix + "trash/" }

// parseManifestKey splits key (under base) into volume and generation.
func parseManifestKey(base, key string) (string, uint64, bool) {
	rest, ok := strings.CutPrefix(key, base)
	if !ok {
		return "", 0, false
	}
	vol, g, ok := strings.Cut(rest, "/")
	if !ok || vol == "" || len(g) != 20 {
		return "", 0, false
	}
	gen, err := strconv.ParseUint(g, 10, 64)
	if err != nil || gen == 0 {
		return "", 0, false
	}
	return vol, gen, true
}

// Error classification.

func (s *Store) noBucket() error {
	return failf(ErrNoBucket, "bucket %q does not exist at %s (create it, or check the store URL and the endpoint)", s.bucket, strings.SplitN(s.where, " at ", 2)[1])
}

// classify turns a failed request into one of the sentinel errors, or an
// error describing the failure; transient reports whether retrying may help.
func (s *Store) classify(op string, err error) (_ error, transient bool) {
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("%w: %s refused to %s (%s): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the shared credentials file, and that the key may use the bucket", ErrBadCredentials, s.where, op, r.Code), false
	case "NoSuchBucket":
		return s.noBucket(), false
	case "NoSuchKey", "NoSuchObject":
		return failf(ErrNotFound, "%s: %s is not in the store", op, r.Key), false
	case "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "XMinioServerNotInitialized",
		"XMinioStorageFull", "XMinioReadQuorum", "XMinioWriteQuorum", "OperationTimedOut":
		return fmt.Errorf("%s: %s (%s)", op, r.Code, r.Message), true
	}
	if r.StatusCode >= 500 || r.StatusCode == http.StatusTooManyRequests || r.StatusCode == http.StatusRequestTimeout {
		return fmt.Errorf("%s: HTTP %d %s", op, r.StatusCode, r.Code), true
	}
	if r.StatusCode == http.StatusNotFound {
		return failf(ErrNotFound, "%s: not in the store (HTTP 404)", op), false
	}
	if r.Code != "" || r.StatusCode != 0 {
		return fmt.Errorf("%s: %s (HTTP %d): %s", op, r.Code, r.StatusCode, r.Message), false
	}
	msg := err.Error()
	if strings.Contains(msg, "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("%s: %s speaks plain HTTP: pass --insecure to allow it", op, s.where), false
	}
	if connectionLost(err) {
		return fmt.Errorf("%s: %w", op, err), true
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Other transport errors (DNS, TLS) are permanent.
		return fmt.Errorf("%s: %w", op, err), false
	}
	return fmt.Errorf("%s: %w", op, err), false
}

// connectionLost reports whether err is a connection-level failure, which
// a retry may cure: the server went away (restarted, overloaded, a proxy
// dropped the connection) or did not answer in time. minio-go rewrites some
// of them into plain messages ("Connection closed by foreign host … Retry
// again." for an EOF), so the messages are matched too.
func connectionLost(err error) bool {
	var ne net.Error
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, context.DeadlineExceeded) || // a client timeout, the caller's context is live
		errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	msg := err.Error()
	for _, s := range []string{
		"Connection closed by foreign host", // minio-go's rewritten EOF
		"connection reset", "connection refused", "broken pipe", "unexpected EOF",
		"server closed idle connection", "use of closed network connection",
		"transport connection broken", "TLS handshake timeout", "i/o timeout",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// do runs f until it succeeds, fails permanently or used up the retry
// policy; it returns a classified error.
func (s *Store) do(ctx context.Context, op string, f func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		var stop *stopError
		if errors.As(err, &stop) {
			return stop.err
		}
		cerr, transient := s.classify(op, err)
		if !transient {
			return cerr
		}
		if attempt >= s.retry.Attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", cerr, attempt)
		}
		d := s.retry.Base << (attempt - 1)
		if d > s.retry.Max || d <= 0 {
			d = s.retry.Max
		}
		d = d/2 + rand.N(d+1) // ±50%
		s.retries.Add(1)
		s.log.Debug("retrying", "op", op, "attempt", attempt, "in", d, "err", cerr)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
	}
}

// Requests, each retried.

// get reads a whole object of at most limit bytes; it checks the size the
// store reports before allocating.
func (s *Store) get(ctx context.Context, op, key string, limit int64) ([]byte, error) {
	out, _, err := s.getInfo(ctx, op, key, limit)
	return out, err
}

// getInfo is get that also returns the object's info (its user metadata).
func (s *Store) getInfo(ctx context.Context, op, key string, limit int64) ([]byte, minio.ObjectInfo, error) {
	var (
		out  []byte
		meta minio.ObjectInfo
	)
	err := s.do(ctx, op, func(ctx context.Context) error {
		rc, info, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer rc.Close()
		if info.Size < 0 || info.Size > limit {
			return fmt.Errorf("%w: %s is %d bytes, more than %d", ErrCorrupt, key, info.Size, limit)
		}
		buf := make([]byte, info.Size)
		if _, err := io.ReadFull(rc, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		out, meta = buf, info
		return nil
	})
	return out, meta, err
}

// put writes an object with user metadata meta (may be nil); ifAbsent
// makes the write fail with errExists when the object exists.
func (s *Store) put(ctx context.Context, op, key string, data []byte, meta map[string]string, ifAbsent bool) error {
	return s.do(ctx, op, func(ctx context.Context) error {
		opt := minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: len(data) <= 64<<20, UserMetadata: meta}
		if ifAbsent {
			opt.SetMatchETagExcept("*")
		}
		_, err := s.cl.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)), opt)
		if ifAbsent && minio.ToErrorResponse(err).Code == "PreconditionFailed" {
			return errExists
		}
		return err
	})
}

var errExists = errors.New("object exists")

// stat returns an object's info; a missing object is ErrNotFound.
func (s *Store) stat(ctx context.Context, op, key string) (minio.ObjectInfo, error) {
	var info minio.ObjectInfo
	err := s.do(ctx, op, func(ctx context.Context) error {
		var err error
		info, err = s.cl.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
		return err
	})
	return info, err
}

func (s *Store) remove(ctx context.Context, op, key string) error {
	return s.do(ctx, op, func(ctx context.Context) error {
		return s.cl.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	})
}

// copy copies src to dst inside the bucket (server side) with user
// metadata meta (may be nil) and a voldelta-copied stamp; src == dst
// refreshes the object's modification time.
func (s *Store) copy(ctx context.Context, op, dst, src string, meta map[string]string) error {
	um := map[string]string{"Voldelta-Copied": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range meta {
		um[k] = v
	}
	return s.do(ctx, op, func(ctx context.Context) error {
		_, err := s.cl.CopyObject(ctx,
			minio.CopyDestOptions{Bucket: s.bucket, Object: dst, ReplaceMetadata: true, UserMetadata: um},
			minio.CopySrcOptions{Bucket: s.bucket, Object: src})
		return err
	})
}

// list calls fn with every object under prefix, in key order. A listing is
// retried from where it stopped.
func (s *Store) list(ctx context.Context, op, prefix string, fn func(minio.ObjectInfo) error) error {
	after := ""
	return s.do(ctx, op, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range s.cl.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true, StartAfter: after}) {
			if o.Err != nil {
				return o.Err
			}
			if err := fn(o); err != nil {
				return &stopError{err}
			}
			after = o.Key
		}
		return nil
	})
}

// stopError carries fn's error out of list without a retry.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// removeMany deletes keys with multi-object deletes, 1000 per request.
func (s *Store) removeMany(ctx context.Context, op string, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		batch := keys[:n]
		keys = keys[n:]
		err := s.do(ctx, op, func(ctx context.Context) error {
			ch := make(chan minio.ObjectInfo, len(batch))
			for _, k := range batch {
				ch <- minio.ObjectInfo{Key: k}
			}
			close(ch)
			for e := range s.cl.RemoveObjects(ctx, s.bucket, ch, minio.RemoveObjectsOptions{}) {
				if e.Err != nil && minio.ToErrorResponse(e.Err).Code != "NoSuchKey" {
					return e.Err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
