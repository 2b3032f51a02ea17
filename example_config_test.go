package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// deployConfigKeys lists every TOML key of the Config struct, nested tables
// included, as "table.key" ("" table for the top level).
func deployConfigKeys(typ reflect.Type, table string) []string {
	var keys []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := strings.Split(f.Tag.Get("toml"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(Duration{}) {
			keys = append(keys, deployConfigKeys(ft, tag)...)
			continue
		}
		keys = append(keys, table+"."+tag)
	}
	return keys
}

func TestDeployExampleConfigExplainsEveryKey(t *testing.T) {
	example, err := os.ReadFile("etc/willi.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	// Every key, set or commented out, in its table.
	sections := map[string]string{"": string(example)}
	for _, table := range []string{"tls", "proxy_protocol", "mapping", "upstream"} {
		re := regexp.MustCompile(`(?m)^#?\[\[?` + table + `\]\]?\s*$`)
		locs := re.FindAllStringIndex(string(example), -1)
		if len(locs) == 0 {
			t.Errorf("example config has no [%s] table", table)
		}
		for _, l := range locs {
			rest := string(example)[l[1]:]
			if next := regexp.MustCompile(`(?m)^#?\[`).FindStringIndex(rest); next != nil {
				rest = rest[:next[0]]
			}
			sections[table] += rest
		}
	}
	keys := deployConfigKeys(reflect.TypeOf(Config{}), "")
	if len(keys) < 20 {
		t.Fatalf("found only %d config keys by reflection: %v", len(keys), keys)
	}
	for _, k := range keys {
		table, key, _ := strings.Cut(k, ".")
		if !regexp.MustCompile(`(?m)^#?` + regexp.QuoteMeta(key) + ` = `).MatchString(sections[table]) {
			t.Errorf("example config does not show key %q in table [%s]", key, table)
		}
	}

	// As shipped, and with every commented-out setting enabled, it is a
	// valid config.
	if _, err := parseConfig(string(example), "/opt/willi/etc/willi.conf"); err != nil {
		t.Errorf("the example config as shipped: %v", err)
	}
	all := regexp.MustCompile(`(?m)^#(\[|[a-z_]+ = )`).ReplaceAllString(string(example), "$1")
	if _, err := parseConfig(all, "/opt/willi/etc/willi.conf"); err != nil {
		t.Errorf("the example config with every setting enabled: %v\n%s", err, all)
	}
}
