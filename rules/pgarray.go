package rules

import "github.com/lib/pq"

func stringArray(s []string) any { return pq.Array(s) }
