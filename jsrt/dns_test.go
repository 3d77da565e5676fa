package jsrt

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDNSCacheKeepsThirtyTwoEntriesForThreeMinutes(t *testing.T) {
	t.Parallel()
	var c dnsCache
	now := time.Now()
	for i := range 40 {
		c.put(fmt.Sprint(i), i, now.Add(time.Duration(i)*time.Millisecond))
	}
	require.Len(t, c.entries, dnsCacheSize)
	_, ok := c.get("0", now)
	require.False(t, ok, "the entry closest to expiry makes room")
	v, ok := c.get("39", now)
	require.True(t, ok)
	require.Equal(t, 39, v)
	_, ok = c.get("39", now.Add(dnsCacheTTL+time.Second))
	require.False(t, ok, "entries expire after three minutes")
}
