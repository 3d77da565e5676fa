// Package testinfra finds the services that Herald's integration tests talk
// to (PostgreSQL, NATS JetStream, Mailpit) and gives each test its own
// isolated slice of them: a fresh, migrated database schema, and stream,
// subject and consumer names of its own.
//
// A service is found, in order: from its environment variable
// (DATABASE_URL, NATS_URL, SMTP_URL with MAILPIT_API_URL), at its local
// default address when something answers there, or in a container started
// through testcontainers-go when Docker is available. Otherwise the test is
// skipped with a message, or, when CI=true, fails.
//
// It is imported only by tests.
package testinfra

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// service is a lazily discovered endpoint shared by all tests of a binary.
type service struct {
	once sync.Once
	addr string
	err  error
}

func (s *service) get(t testing.TB, name string, find func() (string, error)) string {
	t.Helper()
	s.once.Do(func() { s.addr, s.err = find() })
	if s.err != nil {
		Unavailable(t, fmt.Sprintf("%s: %v", name, s.err))
	}
	return s.addr
}

// Unavailable skips t because a service is missing, or fails it when CI=true.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("required service unavailable under CI=true: %s", why)
	}
	t.Skipf("service unavailable, skipping: %s", why)
}

// answers reports whether something accepts TCP connections at hostport.
func answers(hostport string) bool {
	c, err := net.DialTimeout("tcp", hostport, 500*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// dockerAvailable reports whether testcontainers can start containers.
func dockerAvailable() (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	p, err := testcontainers.ProviderDefault.GetProvider()
	if err != nil {
		return false
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.Health(ctx) == nil
}

// startContainer starts img with the given exposed ports and returns the
// host:port mapped for each. The container lives as long as the test binary
// (the testcontainers reaper removes it).
func startContainer(img string, ports []string, strategy wait.Strategy, opts ...testcontainers.ContainerCustomizer) (map[string]string, error) {
	if !dockerAvailable() {
		return nil, fmt.Errorf("not configured, nothing answers at the default address, and Docker is not available for testcontainers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts = append(opts, testcontainers.WithExposedPorts(ports...), testcontainers.WithWaitStrategy(strategy))
	ctr, err := testcontainers.Run(ctx, img, opts...)
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", img, err)
	}
	host, err := ctr.Host(ctx)
	if err != nil {
		return nil, fmt.Errorf("container host: %w", err)
	}
	out := make(map[string]string, len(ports))
	for _, p := range ports {
		mp, err := ctr.MappedPort(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("container port %s: %w", p, err)
		}
		out[p] = net.JoinHostPort(host, mp.Port())
	}
	return out, nil
}

var unsafeName = regexp.MustCompile(`[^a-z0-9]+`)

// Name returns a short identifier unique to t and this run, made of lower
// case letters, digits and underscores.
func Name(t testing.TB) string {
	base := strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	if len(base) > 30 {
		base = base[len(base)-30:]
	}
	return fmt.Sprintf("t%d_%s", time.Now().UnixNano()%1e10, strings.Trim(base, "_"))
}
