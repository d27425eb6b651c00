package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "voldelta",
		Short: "Replicate block volumes to another datacenter, sending only what changed",
		Long: `voldelta keeps a replica of a volume (a block device or an image file) in
another datacenter. An agent next to the source cuts it into content-defined
chunks, names them by BLAKE3 hash and sends only the chunks the receiver's
copy lacks, over one TLS 1.3 connection. The receiver writes them in place,
verifies the whole target against the source's root hash and only then
commits a new generation, so a cutover costs the last small delta, not a
restore.

Typical use:

  # destination: serve two replica volumes
  voldelta receive --listen :7300 --state-dir /var/lib/voldelta \
      --target db=/dev/vg0/db-replica --target web=/srv/replicas/web.img \
      --tls-cert receiver.pem --tls-key receiver-key.pem --tls-ca ca.pem

  # source: one sync round (repeat it; the last one before cutover is small)
  voldelta send --source /dev/vg0/db-snap --to replica.example:7300 --volume db \
      --tls-cert agent.pem --tls-key agent-key.pem --tls-ca ca.pem --stats-json -

Exit codes: 0 success, 1 failure (one line on stderr), 2 bad usage.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c.CommandPath(), err: err}
	})
	root.AddCommand(newSendCmd(), newReceiveCmd(), newAgentCmd(), newK8sReceiverCmd(), newHashCmd(), newStatusCmd(), newScrubCmd(), newCertsCmd(), newPushCmd(), newPullCmd(), newGCCmd(), newMigrateCmd(), newControllerCmd(), newSyncCmd(), newDescribeCmd())
	root.CompletionOptions.HiddenDefaultCmd = true
	invokedAs(root, os.Args[0])
	return root
}

// kubectlPlugin is the name kubectl finds this binary by as its plugin
// `kubectl voldelta` (ln -s "$(command -v voldelta)" /usr/local/bin/kubectl-voldelta).
const kubectlPlugin = "kubectl-voldelta"

// invokedAs names root after the binary's invoked name arg0: as
// kubectl-voldelta, help, examples and errors say "kubectl voldelta".
func invokedAs(root *cobra.Command, arg0 string) {
	if strings.TrimSuffix(filepath.Base(arg0), ".exe") != kubectlPlugin {
		return
	}
	root.Use = kubectlPlugin
	root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl voldelta"}
	var rename func(*cobra.Command)
	rename = func(c *cobra.Command) {
		c.Example = exampleCommand.ReplaceAllString(c.Example, "${1}kubectl voldelta ")
		for _, sub := range c.Commands() {
			rename(sub)
		}
	}
	rename(root)
}

var exampleCommand = regexp.MustCompile(`(?m)^(\s*)voldelta `)

// usageArgs wraps a cobra positional-args check so its errors exit 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return &usageError{cmd: c.CommandPath(), err: err}
		}
		return nil
	}
}

func usagef(c *cobra.Command, format string, a ...any) error {
	return &usageError{cmd: c.CommandPath(), err: fmt.Errorf(format, a...)}
}

// tlsFlags are shared by send and receive.
type tlsFlags struct {
	cert, key, ca, serverName string
	insecure                  bool
}

func (f *tlsFlags) register(fs *pflag.FlagSet, peer string) {
	fs.StringVar(&f.cert, "tls-cert", "", "PEM certificate of this end (see 'voldelta certs')")
	fs.StringVar(&f.key, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&f.ca, "tls-ca", "", "PEM CA certificate that signed the "+peer+"'s certificate")
	fs.BoolVar(&f.insecure, "insecure", false, "use plain TCP without TLS or authentication (only on trusted networks and for tests)")
}

func (f *tlsFlags) config(c *cobra.Command, server bool) (transport.Config, error) {
	cfg := transport.DefaultConfig()
	any := f.cert != "" || f.key != "" || f.ca != ""
	switch {
	case f.insecure && any:
		return cfg, usagef(c, "--insecure and --tls-* exclude each other")
	case f.insecure:
		cfg.Insecure = true
	case !any:
		return cfg, usagef(c, "give --tls-cert, --tls-key and --tls-ca for mutual TLS, or --insecure for plain TCP")
	default:
		t, err := transport.LoadTLS(f.cert, f.key, f.ca, server)
		if err != nil {
			return cfg, err
		}
		t.ServerName = f.serverName
		cfg.TLS = t
	}
	return cfg, nil
}

// chunkFlags select chunking parameters.
type chunkFlags struct {
	min, avg, max, segment string
}

func (f *chunkFlags) register(fs *pflag.FlagSet) {
	d := chunk.DefaultParams()
	fs.StringVar(&f.min, "chunk-min", sizeString(uint64(d.MinSize)), "smallest chunk")
	fs.StringVar(&f.avg, "chunk-avg", sizeString(uint64(d.AvgSize)), "average chunk (a power of two)")
	fs.StringVar(&f.max, "chunk-max", sizeString(uint64(d.MaxSize)), "largest chunk")
	fs.StringVar(&f.segment, "segment-size", sizeString(d.SegmentSize), "the volume is chunked in independent segments of this size, in parallel")
}

func (f *chunkFlags) params(c *cobra.Command) (chunk.Params, error) {
	p := chunk.DefaultParams()
	var vals [4]uint64
	for i, s := range []string{f.min, f.avg, f.max, f.segment} {
		v, err := parseSize(s)
		if err != nil {
			return p, usagef(c, "%v", err)
		}
		vals[i] = v
	}
	if vals[0] > 1<<31 || vals[1] > 1<<31 || vals[2] > 1<<31 {
		return p, usagef(c, "chunk sizes above 2 GiB are not supported")
	}
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = uint32(vals[0]), uint32(vals[1]), uint32(vals[2]), vals[3]
	if err := p.Validate(); err != nil {
		return p, usagef(c, "%v", err)
	}
	return p, nil
}

// parseSize parses "64KiB", "256K", "1M", "1GiB" or a byte count; K, M and
// G are powers of 1024 here.
func parseSize(s string) (uint64, error) {
	in := s
	s = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "B"), "i")
	mult := uint64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult, s = 1<<10, s[:n-1]
		case 'm', 'M':
			mult, s = 1<<20, s[:n-1]
		case 'g', 'G':
			mult, s = 1<<30, s[:n-1]
		}
	}
	var v uint64
	if _, err := fmt.Sscanf(s, "%d", &v); err != nil || fmt.Sprint(v) != s {
		return 0, fmt.Errorf("size %q: want a whole number with an optional K, M or G (KiB, MiB, GiB)", in)
	}
	return v * mult, nil
}

func sizeString(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprint(n)
}

// logFlags configure log/slog on stderr.
type logFlags struct {
	level, format string
}

func (f *logFlags) register(fs *pflag.FlagSet, def string) {
	fs.StringVar(&f.level, "log-level", def, "log level: debug, info, warn or error")
	fs.StringVar(&f.format, "log-format", "text", "log format: text or json")
}

func (f *logFlags) logger(c *cobra.Command, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.level)); err != nil {
		return nil, usagef(c, "--log-level %q: want debug, info, warn or error", f.level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch f.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef(c, "--log-format %q: want text or json", f.format)
}

var stderr io.Writer = os.Stderr
