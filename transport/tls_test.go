package transport

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/voldelta/voldelta/internal/pki"
)

// Item 12: every TLS failure fails session setup on both ends (the agent's
// Dial, not a later read as EOF, "session shutdown" or "broken pipe") with
// ErrTLS and a message naming the cause on the side that can act on it.
func TestTLSFailuresNameTheCause(t *testing.T) {
	p := testCerts(t)
	expiredAgent, err := p.ca.Issue(agentName, nil, -30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	expiredReceiver, err := p.ca.Issue(receiverName, []string{"127.0.0.1", serverHost}, -30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name               string
		agent, server      *pki.Leaf
		wantAgent, wantSrv []string
	}{
		{"agent from another CA", p.otherAgnt, p.receiver,
			[]string{"rejected this agent's certificate", "--tls-cert"}, []string{"rejected the certificate of the agent", "--tls-ca"}},
		{"receiver from another CA", p.agent, p.otherReceiver,
			[]string{"does not trust", "--tls-ca"}, []string{"agent", "rejected this receiver's certificate"}},
		{"expired agent certificate", expiredAgent, p.receiver,
			[]string{"rejected this agent's certificate", "expired"}, []string{"rejected the certificate of the agent", "expired"}},
		{"expired receiver certificate", p.agent, expiredReceiver,
			[]string{"does not trust", "expired"}, []string{"rejected this receiver's certificate"}},
	}
	for _, tc := range cases {
		for _, k := range []kind{kinds[2], kinds[3]} {
			t.Run(tc.name+"/"+k.name, func(t *testing.T) {
				ccfg, scfg := configs(t, k)
				ccfg.TLS.Certificates = []tls.Certificate{tc.agent.TLS}
				scfg.TLS.Certificates = []tls.Certificate{tc.server.TLS}
				_, _, cerr, serr := connect(t, k, ccfg, scfg)
				t.Logf("agent: %v", cerr)
				t.Logf("receiver: %v", serr)
				for _, c := range []struct {
					side string
					err  error
					want []string
				}{{"agent", cerr, tc.wantAgent}, {"receiver", serr, tc.wantSrv}} {
					if !errors.Is(c.err, ErrTLS) {
						t.Errorf("%s: %v, want ErrTLS at session setup", c.side, c.err)
						continue
					}
					for _, w := range c.want {
						if !strings.Contains(c.err.Error(), w) {
							t.Errorf("%s: %q does not say %q", c.side, c.err, w)
						}
					}
				}
			})
		}
	}
}
