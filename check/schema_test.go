package check

import (
	"crypto/x509"
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"testing"
)

func newPool() *x509.CertPool { return x509.NewCertPool() }

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("schema.json: %v", err)
	}
	return s
}

func schemaProbeIDs(s map[string]any) map[string]bool {
	ids := map[string]bool{}
	defs := s["$defs"].(map[string]any)
	probe := defs["probe"].(map[string]any)
	id := probe["properties"].(map[string]any)["id"].(map[string]any)
	for _, v := range id["enum"].([]any) {
		ids[v.(string)] = true
	}
	return ids
}

// validate checks doc against the small part of JSON Schema that
// schema.json uses: type, properties, required, additionalProperties
// false, items, enum and $ref to #/$defs/.
func validate(t *testing.T, path string, root, s map[string]any, doc any) {
	t.Helper()
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/$defs/")
		s = root["$defs"].(map[string]any)[name].(map[string]any)
	}
	if enum, ok := s["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			if e == doc {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %v not in enum %v", path, doc, enum)
		}
	}
	switch s["type"] {
	case "object":
		m, ok := doc.(map[string]any)
		if !ok {
			t.Errorf("%s: %T, want an object", path, doc)
			return
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range asList(s["required"]) {
			if _, ok := m[r]; !ok {
				t.Errorf("%s: required %q missing", path, r)
			}
		}
		for k, v := range m {
			ps, ok := props[k].(map[string]any)
			if !ok {
				t.Errorf("%s: key %q not in schema.json", path, k)
				continue
			}
			validate(t, path+"."+k, root, ps, v)
		}
	case "array":
		a, ok := doc.([]any)
		if !ok {
			t.Errorf("%s: %T, want an array", path, doc)
			return
		}
		if items, ok := s["items"].(map[string]any); ok {
			for _, v := range a {
				validate(t, path+"[]", root, items, v)
			}
		}
	case "string":
		if _, ok := doc.(string); !ok {
			t.Errorf("%s: %T, want a string", path, doc)
		}
	case "number", "integer":
		if _, ok := doc.(float64); !ok {
			t.Errorf("%s: %T, want a number", path, doc)
		}
	case "boolean":
		if _, ok := doc.(bool); !ok {
			t.Errorf("%s: %T, want a boolean", path, doc)
		}
	}
}

func asList(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		out = append(out, x.(string))
	}
	return out
}
