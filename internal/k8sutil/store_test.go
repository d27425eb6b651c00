package k8sutil

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/pki"
)

func TestStoreConfig(t *testing.T) {
	ca, err := pki.NewCA("store-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	secret := func(name string, data map[string]string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name}, Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	kube := fake.NewClientset(
		secret("ok", map[string]string{KeyAccessKeyID: "AKID\n", KeySecretAccessKey: "secret", KeySessionToken: "tok", KeyCA: string(ca.PEM)}),
		secret("plain", map[string]string{KeyAccessKeyID: "AKID", KeySecretAccessKey: "secret"}),
		secret("nokey", map[string]string{KeyAccessKeyID: "AKID"}),
		secret("badca", map[string]string{KeyAccessKeyID: "AKID", KeySecretAccessKey: "secret", KeyCA: "not a certificate"}),
	)
	spec := v1alpha1.Store{URL: "s3://replicas/prod/db", Endpoint: "https://minio.storage:9000", Region: "eu-1", CredentialsSecretName: "ok"}
	ctx := context.Background()

	cfg, err := StoreConfig(ctx, kube, "app", spec, StoreOptions{BandwidthLimit: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bucket != "replicas" || cfg.Prefix != "prod/db" || cfg.Endpoint != "minio.storage:9000" || cfg.Insecure ||
		cfg.Region != "eu-1" || cfg.BandwidthLimit != 1e6 || cfg.RootCAs == nil {
		t.Fatalf("config %+v", cfg)
	}
	v, err := cfg.Creds.GetWithContext(&credentials.CredContext{})
	if err != nil || v.AccessKeyID != "AKID" || v.SecretAccessKey != "secret" || v.SessionToken != "tok" {
		t.Fatalf("credentials %+v, %v", v, err)
	}

	plain := spec
	plain.CredentialsSecretName, plain.Endpoint, plain.Insecure = "plain", "127.0.0.1:9000", true
	if cfg, err := StoreConfig(ctx, kube, "app", plain, StoreOptions{}); err != nil || cfg.RootCAs != nil || !cfg.Insecure || cfg.Endpoint != "127.0.0.1:9000" {
		t.Fatalf("plain: %+v, %v", cfg, err)
	}

	for _, tc := range []struct {
		name     string
		mod      func(*v1alpha1.Store)
		ns, want string
		creds    bool // wraps ErrCredentials
	}{
		{"missing secret", func(s *v1alpha1.Store) { s.CredentialsSecretName = "gone" }, "app", "Secret app/gone", true},
		{"other namespace", func(*v1alpha1.Store) {}, "other", "Secret other/ok", true},
		{"missing key", func(s *v1alpha1.Store) { s.CredentialsSecretName = "nokey" }, "app", "lacks AWS_SECRET_ACCESS_KEY", true},
		{"bad ca", func(s *v1alpha1.Store) { s.CredentialsSecretName = "badca" }, "app", "ca.crt holds no PEM certificate", true},
		{"bad url", func(s *v1alpha1.Store) { s.URL = "http://replicas" }, "app", "store url", false},
		{"bad endpoint", func(s *v1alpha1.Store) { s.Endpoint = "ftp://x" }, "app", "store endpoint", false},
	} {
		s := spec
		tc.mod(&s)
		_, err := StoreConfig(ctx, kube, tc.ns, s, StoreOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrCredentials) != tc.creds {
			t.Errorf("%s: err = %v, want %q (credentials error: %v)", tc.name, err, tc.want, tc.creds)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int32]time.Duration{0: 5 * time.Second, 1: 5 * time.Second, 2: 10 * time.Second, 3: 20 * time.Second,
		6: 160 * time.Second, 7: 5 * time.Minute, 100: 5 * time.Minute} {
		if got := Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
}
