package queue

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseRetryPolicy reads "CHANNEL:initial=2s,multiplier=2,max=1m,attempts=5,max-age=1h".
// Keys not given keep their value from def.
func ParseRetryPolicy(s string, def RetryPolicy) (string, RetryPolicy, error) {
	ch, spec, ok := strings.Cut(s, ":")
	if !ok || ch == "" {
		return "", def, errors.New("want CHANNEL:key=value,..., e.g. telegram:initial=2s,attempts=5")
	}
	p := def
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return "", def, fmt.Errorf("%q is not key=value", kv)
		}
		var err error
		switch k {
		case "initial":
			p.Initial, err = time.ParseDuration(v)
		case "max":
			p.Max, err = time.ParseDuration(v)
		case "max-age":
			p.MaxAge, err = time.ParseDuration(v)
		case "multiplier":
			p.Multiplier, err = strconv.ParseFloat(v, 64)
			if err == nil && p.Multiplier < 1 {
				err = errors.New("must be at least 1")
			}
		case "attempts":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			p.MaxAttempts = uint32(n)
		default:
			return "", def, fmt.Errorf("unknown key %q: use initial, multiplier, max, attempts or max-age", k)
		}
		if err != nil {
			return "", def, fmt.Errorf("%s=%s: %v", k, v, err)
		}
	}
	if p.Initial <= 0 || p.Max < p.Initial {
		return "", def, fmt.Errorf("initial=%s and max=%s: want 0 < initial <= max", p.Initial, p.Max)
	}
	return ch, p, nil
}
