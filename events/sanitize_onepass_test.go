package events

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestSinglePassEqualsTwoPass(t *testing.T) {
	for _, in := range []string{
		`{"secret": null, "nested_null": {"api_key": null, "plain": null}}`,
		`{"password": ["", "x", 0, {"a": ""}], "list": [0, false, "", null, [], {}, "a\u0000b", {"token": "t", "k": [1, 0]}], "n": 1.5, "i": 12, "big": 123456789012, "nested": {"api_key": "s", "author": ["a", ""], "auth_method_args": {"known_device": false}}}`,
	} {
		var a, b map[string]any
		dec := func(dst *map[string]any) {
			d := json.NewDecoder(strings.NewReader(in))
			d.UseNumber()
			if err := d.Decode(dst); err != nil {
				t.Fatal(err)
			}
		}
		dec(&a)
		dec(&b)
		two := Cleanse(Sanitize(a).(map[string]any))
		one := sanitizeAndCleanse(b)
		if !reflect.DeepEqual(one, two) {
			t.Fatalf("one pass %v\ntwo pass %v", one, two)
		}
	}
}
