package jsrt

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"

	"github.com/dop251/goja"
)

// pythonPrivate are the networks Python's ipaddress (3.13) calls
// private, but for those of pythonNotPrivate.
var (
	pythonPrivate = mustPrefixes(
		"0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
		"198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
		"::1/128", "::/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
		"2001:db8::/32", "2002::/16", "3fff::/20", "fc00::/7", "fe80::/10",
	)
	pythonNotPrivate = mustPrefixes(
		"192.0.0.9/32", "192.0.0.10/32",
		"2001:1::1/128", "2001:1::2/128", "2001:3::/32", "2001:4:112::/48", "2001:20::/28", "2001:30::/28",
	)
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func isPrivate(a netip.Addr) bool {
	a = a.Unmap()
	return containedIn(pythonPrivate, a) && !containedIn(pythonNotPrivate, a)
}

// isPrivateNetwork is Python's is_private of a network: one private
// network holds all of it, and neither end is an exception.
func isPrivateNetwork(p netip.Prefix) bool {
	first, last := p.Addr(), lastAddr(p)
	if containedIn(pythonNotPrivate, first) || containedIn(pythonNotPrivate, last) {
		return false
	}
	for _, n := range pythonPrivate {
		if n.Bits() <= p.Bits() && n.Contains(first) {
			return true
		}
	}
	return false
}

func containedIn(nets []netip.Prefix, a netip.Addr) bool {
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// lastAddr is p's last address (its broadcast address, for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// sharedAddressSpace is RFC 6598's carrier-grade NAT range, not global.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// isGlobal is Python's is_global: neither private nor shared address
// space (multicast addresses are global).
func isGlobal(a netip.Addr) bool {
	return !isPrivate(a) && !sharedAddressSpace.Contains(a.Unmap())
}

// ipObject is what ip_address returns: version, is_private, is_global,
// is_loopback, is_multicast, is_link_local, is_unspecified, compressed,
// and toString().
func (v *vm) ipObject(a netip.Addr) *goja.Object {
	text := a.String()
	a = a.WithZone("") // a zone (fe80::1%eth0) counts in its text only, as in Python
	version := 4
	if a.Is6() { // an IPv4-mapped address too, as in Python
		version = 6
	}
	// Properties are computed when first read: a policy usually reads one,
	// or none (ip_network(...).contains(ak_client_ip)).
	obj := v.newLazy(ipKeys, func(key string) goja.Value {
		switch key {
		case "version":
			return v.rt.ToValue(version)
		case "is_private":
			return v.rt.ToValue(isPrivate(a))
		case "is_global":
			return v.rt.ToValue(isGlobal(a))
		case "is_loopback":
			return v.rt.ToValue(a.IsLoopback())
		case "is_multicast":
			return v.rt.ToValue(a.IsMulticast())
		case "is_link_local":
			return v.rt.ToValue(a.IsLinkLocalUnicast())
		case "is_unspecified":
			return v.rt.ToValue(a.IsUnspecified())
		}
		return v.rt.ToValue(text)
	})
	_ = obj.SetPrototype(v.ipProto)
	setShort(obj, func(*lazyObject) any { return text }) // str(), as sanitize_item
	return obj
}

// ipKeys are the properties of an ip_address object.
var ipKeys = []string{"version", "is_private", "is_global", "is_loopback", "is_multicast", "is_link_local", "is_unspecified", "compressed"}

// netKeys are the properties of an ip_network object.
var netKeys = []string{"version", "prefixlen", "network_address", "broadcast_address", "is_private", "is_global",
	"is_loopback", "is_multicast", "is_link_local", "is_unspecified", "with_prefixlen"}

// installIP creates the prototypes of ip_address and ip_network objects and
// ak_client_ip, computed on first use for each event.
func (v *vm) installIP() {
	str := func(prop string) func(goja.FunctionCall) goja.Value {
		return func(call goja.FunctionCall) goja.Value {
			if o, ok := call.This.(*goja.Object); ok {
				if val := o.Get(prop); val != nil {
					return val
				}
			}
			return goja.Undefined()
		}
	}
	v.ipProto = v.rt.NewObject()
	_ = v.ipProto.Set("toString", str("compressed"))
	_ = v.ipProto.Set("toJSON", str("compressed"))
	v.netProto = v.rt.NewObject()
	_ = v.netProto.Set("toString", str("with_prefixlen"))
	_ = v.netProto.Set("toJSON", str("with_prefixlen"))
	_ = v.netProto.Set("contains", func(call goja.FunctionCall) goja.Value {
		o, ok := call.This.(*goja.Object)
		var network goja.Value
		if ok {
			network = o.Get("with_prefixlen")
		}
		if network == nil {
			panic(v.rt.NewTypeError("contains: called on something that is not an ip_network"))
		}
		p, err := netip.ParsePrefix(network.String())
		if err != nil {
			return v.rt.ToValue(false)
		}
		a, err := netip.ParseAddr(call.Argument(0).String())
		if err != nil {
			return v.rt.ToValue(false)
		}
		// As Python's `in`: never across versions (an IPv4-mapped
		// address is IPv6), and an IPv6 zone does not count.
		return v.rt.ToValue(p.Contains(a.WithZone("")))
	})
	_ = v.rt.GlobalObject().DefineAccessorProperty("ak_client_ip", v.rt.ToValue(func(goja.FunctionCall) goja.Value {
		if v.cur == nil {
			return goja.Undefined()
		}
		if v.cache.clientIP == nil || v.cache.clientIPOf != v.cur.req.Event {
			v.cache.clientIP, v.cache.clientIPOf = v.clientIP(v.cur.req.Event.ClientIP), v.cur.req.Event
		}
		return v.cache.clientIP
	}), nil, goja.FLAG_FALSE, goja.FLAG_TRUE)
}

// ip_address(s): Python's ipaddress.ip_address, of text or of an integer
// (IPv4 below 2^32); a bad address throws.
func (v *vm) ipAddress(call goja.FunctionCall) goja.Value {
	if n, ok := exportScalar(call.Argument(0)).(int64); ok {
		a, ok := addrFromInt(n)
		if !ok {
			panic(v.rt.NewGoError(fmt.Errorf("ValueError: %d does not appear to be an IPv4 or IPv6 address", n)))
		}
		return v.ipObject(a)
	}
	s := v.stringArg("ip_address", call, 0, "address")
	a, err := netip.ParseAddr(s)
	if err != nil {
		panic(v.rt.NewGoError(fmt.Errorf("ValueError: %q does not appear to be an IPv4 or IPv6 address", s)))
	}
	return v.ipObject(a)
}

// addrFromInt is Python's address of an integer: IPv4 below 2^32, IPv6
// above (a JavaScript number holds up to 2^53).
func addrFromInt(n int64) (netip.Addr, bool) {
	switch {
	case n < 0:
		return netip.Addr{}, false
	case n <= math.MaxUint32:
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(n))
		return netip.AddrFrom4(b), true
	default:
		var b [16]byte
		binary.BigEndian.PutUint64(b[8:], uint64(n))
		return netip.AddrFrom16(b), true
	}
}

// parseNetwork reads a network as Python's ip_network does: an address,
// or an address and a prefix length (leading zeros allowed), or, for IPv4,
// a netmask (255.0.0.0) or a hostmask (0.255.255.255).
func parseNetwork(s string) (netip.Prefix, bool) {
	addr, suffix, hasSuffix := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addr)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	if !hasSuffix {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	if suffix != "" && strings.Trim(suffix, "0123456789") == "" {
		n, err := strconv.Atoi(suffix)
		if err != nil || n > a.BitLen() {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(a, n), true
	}
	mask, err := netip.ParseAddr(suffix)
	if !a.Is4() || err != nil || !mask.Is4() {
		return netip.Prefix{}, false
	}
	m := binary.BigEndian.Uint32(mask.AsSlice())
	for _, x := range []uint32{m, ^m} { // a netmask, else a hostmask
		if ones := bits.LeadingZeros32(^x); x<<ones == 0 {
			return netip.PrefixFrom(a, ones), true
		}
	}
	return netip.Prefix{}, false
}

// ip_network(s): Python's strict ipaddress.ip_network; host bits set throw.
func (v *vm) ipNetwork(call goja.FunctionCall) goja.Value {
	s := v.stringArg("ip_network", call, 0, "network")
	p, ok := parseNetwork(s)
	if !ok {
		panic(v.rt.NewGoError(fmt.Errorf("ValueError: %q does not appear to be an IPv4 or IPv6 network", s)))
	}
	if p.Masked() != p {
		panic(v.rt.NewGoError(fmt.Errorf("ValueError: %s has host bits set", s)))
	}
	first, last := p.Addr(), lastAddr(p)
	// A network is loopback, multicast or link-local when both its first
	// and its last address are, as in Python.
	both := func(has func(netip.Addr) bool) goja.Value { return v.rt.ToValue(has(first) && has(last)) }
	obj := v.newLazy(netKeys, func(key string) goja.Value {
		switch key {
		case "version":
			if first.Is6() {
				return v.rt.ToValue(6)
			}
			return v.rt.ToValue(4)
		case "prefixlen":
			return v.rt.ToValue(p.Bits())
		case "network_address":
			return v.ipObject(first)
		case "broadcast_address":
			return v.ipObject(last)
		case "is_private":
			return v.rt.ToValue(isPrivateNetwork(p))
		case "is_global":
			return v.rt.ToValue(!isPrivateNetwork(p) && !sharedAddressSpace.Contains(first))
		case "is_loopback":
			return both(netip.Addr.IsLoopback)
		case "is_multicast":
			return both(netip.Addr.IsMulticast)
		case "is_link_local":
			return both(netip.Addr.IsLinkLocalUnicast)
		case "is_unspecified":
			return v.rt.ToValue(first.IsUnspecified() && p.Bits() == first.BitLen())
		}
		return v.rt.ToValue(p.String())
	})
	_ = obj.SetPrototype(v.netProto)
	setShort(obj, func(*lazyObject) any { return p.String() })
	return obj
}

// clientIP is ak_client_ip: the event's client_ip, or 255.255.255.255.
func (v *vm) clientIP(ip string) goja.Value {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		a = netip.MustParseAddr("255.255.255.255")
	}
	return v.ipObject(a)
}
