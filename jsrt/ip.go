package jsrt

import (
	"fmt"
	"net/netip"

	"github.com/dop251/goja"
)

// pythonPrivate are the networks Python's ipaddress calls private.
var pythonPrivate = mustPrefixes(
	"0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
	"192.0.0.0/29", "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
	"198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
	"::1/128", "::/128", "::ffff:0:0/96", "100::/64", "2001::/23", "2001:db8::/32",
	"2001:10::/28", "fc00::/7", "fe80::/10",
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
	for _, p := range pythonPrivate {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sharedAddressSpace is RFC 6598's carrier-grade NAT range, not global.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// ipObject is what ip_address returns: version, is_private, is_global,
// is_loopback, is_multicast, is_link_local, is_unspecified, compressed,
// and toString().
func (v *vm) ipObject(a netip.Addr) *goja.Object {
	version := 4
	if a.Is6() && !a.Is4In6() {
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
			return v.rt.ToValue(!isPrivate(a) && !a.IsMulticast() && !(version == 4 && sharedAddressSpace.Contains(a)))
		case "is_loopback":
			return v.rt.ToValue(a.IsLoopback())
		case "is_multicast":
			return v.rt.ToValue(a.IsMulticast())
		case "is_link_local":
			return v.rt.ToValue(a.IsLinkLocalUnicast())
		case "is_unspecified":
			return v.rt.ToValue(a.IsUnspecified())
		}
		return v.rt.ToValue(a.String())
	})
	_ = obj.SetPrototype(v.ipProto)
	return obj
}

// ipKeys are the properties of an ip_address object.
var ipKeys = []string{"version", "is_private", "is_global", "is_loopback", "is_multicast", "is_link_local", "is_unspecified", "compressed"}

// netKeys are the properties of an ip_network object.
var netKeys = []string{"version", "prefixlen", "network_address", "is_private", "with_prefixlen"}

// installIP creates the prototypes of ip_address and ip_network objects and
// ak_client_ip, computed on first use for each event.
func (v *vm) installIP() {
	str := func(prop string) func(goja.FunctionCall) goja.Value {
		return func(call goja.FunctionCall) goja.Value {
			if o, ok := call.This.(*goja.Object); ok {
				return o.Get(prop)
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
		if !ok {
			return v.rt.ToValue(false)
		}
		p, err := netip.ParsePrefix(o.Get("with_prefixlen").String())
		if err != nil {
			return v.rt.ToValue(false)
		}
		a, err := netip.ParseAddr(call.Argument(0).String())
		if err != nil {
			return v.rt.ToValue(false)
		}
		return v.rt.ToValue(p.Contains(a.Unmap()))
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

// ip_address(s): Python's ipaddress.ip_address; a bad address throws.
func (v *vm) ipAddress(call goja.FunctionCall) goja.Value {
	s := v.stringArg("ip_address", call, 0, "address")
	a, err := netip.ParseAddr(s)
	if err != nil {
		panic(v.rt.NewGoError(fmt.Errorf("ValueError: %q does not appear to be an IPv4 or IPv6 address", s)))
	}
	return v.ipObject(a)
}

// ip_network(s): Python's strict ipaddress.ip_network; host bits set throw.
func (v *vm) ipNetwork(call goja.FunctionCall) goja.Value {
	s := v.stringArg("ip_network", call, 0, "network")
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			panic(v.rt.NewGoError(fmt.Errorf("ValueError: %q does not appear to be an IPv4 or IPv6 network", s)))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Masked() != p {
		panic(v.rt.NewGoError(fmt.Errorf("ValueError: %s has host bits set", s)))
	}
	obj := v.newLazy(netKeys, func(key string) goja.Value {
		switch key {
		case "version":
			if p.Addr().Is6() {
				return v.rt.ToValue(6)
			}
			return v.rt.ToValue(4)
		case "prefixlen":
			return v.rt.ToValue(p.Bits())
		case "network_address":
			return v.ipObject(p.Addr())
		case "is_private":
			return v.rt.ToValue(isPrivate(p.Addr()))
		}
		return v.rt.ToValue(p.String())
	})
	_ = obj.SetPrototype(v.netProto)
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
