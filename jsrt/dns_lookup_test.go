package jsrt_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// slowDNS is a DNS server on 127.0.0.1 that answers every A query with
// 10.9.8.7 after delay, and a resolver that asks it.
func slowDNS(t *testing.T, delay time.Duration) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			go func() {
				time.Sleep(delay)
				i := 12 // the question's name, label by label
				for q[i] != 0 {
					i += int(q[i]) + 1
				}
				i++
				qtype := binary.BigEndian.Uint16(q[i:])
				resp := append([]byte(nil), q[:i+4]...)
				resp[2], resp[3] = 0x81, 0x80 // a response, recursion available
				resp[10], resp[11] = 0, 0
				if qtype == 1 {
					binary.BigEndian.PutUint16(resp[6:], 1)
					resp = append(resp, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 8, 7)
				}
				_, _ = pc.WriteTo(resp, addr)
			}()
		}
	}()
	server := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
}

// A lookup cut short by the policy's own deadline times the policy out and
// is not cached: a later policy with time to wait gets the address.
func TestResolveDNSCutShortIsNotCached(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1, Resolver: slowDNS(t, 400*time.Millisecond)})
	run := func(expr string, timeout time.Duration) rules.PolicyResult {
		return pool.Evaluate(t.Context(), &rules.PolicyRequest{
			Policy:  &rules.Policy{Name: "p", Kind: rules.KindExpression, Expression: expr},
			Event:   loginEvent(),
			Timeout: timeout,
		})
	}
	// A name of its own: answers are cached for the whole process.
	host := fmt.Sprintf("cut%d.herald.test", time.Now().UnixNano())
	cut := run(`const end = Date.now() + 800; while (Date.now() < end) {} return resolve_dns("`+host+`", 4);`, time.Second)
	require.NotNil(t, cut.Err, "the lookup ran past the policy's timeout: %+v", cut)
	require.Equal(t, "timeout", cut.Err.Kind)

	later := run(`return resolve_dns("`+host+`", 4);`, 5*time.Second)
	require.Nil(t, later.Err)
	require.Equal(t, []any{"10.9.8.7"}, later.Raw)
}
