package jsrt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/dop251/goja"
)

// dnsCache is a small TTL cache, as authentik's TLRUCache(maxsize=32, ttl=180s).
type dnsCache struct {
	mu      sync.Mutex
	entries map[string]dnsEntry
}

type dnsEntry struct {
	value   any
	expires time.Time
}

const (
	dnsCacheSize = 32
	dnsCacheTTL  = 3 * time.Minute
)

func (c *dnsCache) get(key string, now time.Time) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || now.After(e.expires) {
		return nil, false
	}
	return e.value, true
}

func (c *dnsCache) put(key string, value any, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]dnsEntry, dnsCacheSize)
	}
	if len(c.entries) >= dnsCacheSize {
		// Evict expired entries, then the one closest to expiry.
		var oldest string
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			} else if oldest == "" || e.expires.Before(c.entries[oldest].expires) {
				oldest = k
			}
		}
		if len(c.entries) >= dnsCacheSize {
			delete(c.entries, oldest)
		}
	}
	c.entries[key] = dnsEntry{value: value, expires: now.Add(dnsCacheTTL)}
}

var forwardDNS, reverseDNSCache dnsCache

// resolve_dns(host, version?): the addresses of host (4: IPv4 only, 6:
// IPv6 only); [] when it does not resolve.
func (v *vm) resolveDNS(call goja.FunctionCall) goja.Value {
	host := v.stringArg("resolve_dns", call, 0, "host")
	version := int64(0)
	if a := call.Argument(1); !goja.IsUndefined(a) && !goja.IsNull(a) {
		version = a.ToInteger()
	}
	key := fmt.Sprintf("%s|%d", host, version)
	now := time.Now()
	if cached, ok := forwardDNS.get(key, now); ok {
		return v.stringArray(cached.([]string))
	}
	network := "ip"
	switch version {
	case 4:
		network = "ip4"
	case 6:
		network = "ip6"
	}
	ctx, cancel := context.WithTimeout(v.cur.bounds.context(), 5*time.Second)
	defer cancel()
	addrs, err := v.pool.cfg.Resolver.LookupIP(ctx, network, host)
	out := []string{}
	if err != nil && !v.dnsAnswered("resolve_dns", host, err) {
		return v.stringArray(out) // not cached: a later lookup asks again
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if s := a.String(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	forwardDNS.put(key, out, now)
	return v.stringArray(out)
}

// dnsAnswered reports whether a failed lookup was answered (the name does
// not exist), which is cached like an address. Anything else (a timeout, a
// failing server) is not an answer; when it is the policy's own deadline
// that cut the lookup short, the policy times out.
func (v *vm) dnsAnswered(fn, name string, err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return true
	}
	if v.cur.bounds.context().Err() != nil {
		panic(v.rt.NewGoError(fmt.Errorf("%w: %s(%q): %v", ErrTimeout, fn, name, err)))
	}
	return false
}

// reverse_dns(ip): the name of ip, or ip itself when it has none.
func (v *vm) reverseDNS(call goja.FunctionCall) goja.Value {
	ip := v.stringArg("reverse_dns", call, 0, "ip")
	now := time.Now()
	if cached, ok := reverseDNSCache.get(ip, now); ok {
		return v.rt.ToValue(cached.(string))
	}
	ctx, cancel := context.WithTimeout(v.cur.bounds.context(), 5*time.Second)
	defer cancel()
	name := ip
	names, err := v.pool.cfg.Resolver.LookupAddr(ctx, ip)
	if err != nil && !v.dnsAnswered("reverse_dns", ip, err) {
		return v.rt.ToValue(name) // not cached: a later lookup asks again
	}
	if len(names) > 0 {
		name = names[0]
		if len(name) > 1 && name[len(name)-1] == '.' {
			name = name[:len(name)-1]
		}
	}
	reverseDNSCache.put(ip, name, now)
	return v.rt.ToValue(name)
}

func (v *vm) stringArray(ss []string) goja.Value {
	items := make([]any, len(ss))
	for i, s := range ss {
		items[i] = s
	}
	return v.rt.NewArray(items...)
}
