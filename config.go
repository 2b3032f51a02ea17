package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// defaultConfigFile is where the units and install.sh put the config.
const defaultConfigFile = "/opt/willi/etc/willi.conf"

// Config is the whole TOML configuration. The field tags are the contract's
// key names; any key not listed here is an error (see loadConfig).
type Config struct {
	Hostname               string   `toml:"hostname"`
	LogLevel               string   `toml:"log_level"`
	MaxMessageSize         int64    `toml:"max_message_size"`
	MaxRecipients          int      `toml:"max_recipients"`
	RecipientDelimiter     string   `toml:"recipient_delimiter"`
	CommandTimeout         Duration `toml:"command_timeout"`
	UpstreamConnectTimeout Duration `toml:"upstream_connect_timeout"`
	// Beyond the contract's example, each with a documented default.
	UpstreamCommandTimeout Duration `toml:"upstream_command_timeout"` // RFC 5321 §4.5.3.2: 5 min
	UpstreamDataTimeout    Duration `toml:"upstream_data_timeout"`    // final reply wait, §4.5.3.2.6: 10 min
	SessionTimeout         Duration `toml:"session_timeout"`          // whole session cap
	MaxErrors              int      `toml:"max_errors"`               // consecutive errors before 421
	HardErrorLimit         int      `toml:"hard_error_limit"`         // errors and refused recipients before 421
	SplitRecipients        string   `toml:"split_recipients"`         // defer | fanout

	TLS           *TLSConfig       `toml:"tls"`
	ProxyProtocol *ProxyConfig     `toml:"proxy_protocol"`
	Mappings      []MappingConfig  `toml:"mapping"`
	Upstreams     []UpstreamConfig `toml:"upstream"`

	// path is the file the config was read from; dir is its folder, the base
	// for relative paths.
	path string
	dir  string
}

// TLSConfig enables STARTTLS towards clients.
type TLSConfig struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// ProxyConfig lists the peers that must open with a PROXY protocol header.
type ProxyConfig struct {
	Trusted []string `toml:"trusted"`

	nets []*net.IPNet
}

// MappingConfig is one [[mapping]] table; which fields apply depends on Type.
type MappingConfig struct {
	Type   string `toml:"type"`
	File   string `toml:"file"`   // csv
	DSN    string `toml:"dsn"`    // mysql
	Query  string `toml:"query"`  // mysql
	Server string `toml:"server"` // static
}

// UpstreamConfig is the policy for one server a mapping may return.
type UpstreamConfig struct {
	Server        string `toml:"server"`
	StartTLS      string `toml:"starttls"`
	TLSVerify     bool   `toml:"tls_verify"`
	ClientAddress string `toml:"client_address"`
	// TLS towards this upstream beyond the defaults; see upstreamTLSConfig.
	CAFile     string `toml:"ca_file"`     // PEM trust anchors instead of the system's; implies tls_verify
	ServerName string `toml:"server_name"` // SNI and the name verified; default the server's host
	CertFile   string `toml:"cert_file"`   // client certificate (PEM, may hold the chain)
	KeyFile    string `toml:"key_file"`    // its key (PEM)
	MinVersion string `toml:"min_version"` // "1.2" (default) or "1.3"
}

// Duration is a time.Duration written as a Go duration string in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses "30s", "5m", ...
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %q must be positive", b)
	}
	d.Duration = v
	return nil
}

// Defaults, documented in the README's configuration reference.
const (
	defaultMaxMessageSize = 50 << 20
	defaultMaxRecipients  = 100
	defaultMaxErrors      = 3
	defaultHardErrorLimit = 20 // Postfix's smtpd_hard_error_limit
)

var (
	defaultCommandTimeout         = 5 * time.Minute
	defaultUpstreamConnectTimeout = 30 * time.Second
	defaultUpstreamCommandTimeout = 5 * time.Minute
	defaultUpstreamDataTimeout    = 10 * time.Minute
	defaultSessionTimeout         = 30 * time.Minute
)

// Policy values for [[upstream]].
const (
	tlsMirror        = "mirror"
	tlsOpportunistic = "opportunistic"
	tlsRequired      = "required"
	tlsNever         = "never"

	splitDefer  = "defer"
	splitFanout = "fanout"

	addrXCLIENT = "xclient"
	addrProxyV1 = "proxy-v1"
	addrProxyV2 = "proxy-v2"
	addrNone    = "none"
)

// configError collects every problem in a config so that one run of
// `willi check` reports all of them.
type configError []string

func (e configError) Error() string { return strings.Join(e, "\n") }

// loadConfig reads and validates the config file. It does no I/O beyond
// reading the file: mappings and TLS keys are opened when first needed.
func loadConfig(path string) (*Config, error) {
	c, err := loadConfigPartial(path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// loadConfigPartial is loadConfig for `willi check`: when the file parses
// but has problems, it returns them together with the config as far as it
// was understood, so that check can go on to read the files it names.
func loadConfigPartial(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return nil, err
	}
	return decodeConfig(string(data), abs)
}

// parseConfig parses config text as if read from path.
func parseConfig(text, path string) (*Config, error) {
	c, err := decodeConfig(text, path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// decodeConfig parses and validates config text. With problems it returns
// the config too, unless the text is not TOML.
func decodeConfig(text, path string) (*Config, error) {
	c := &Config{path: path, dir: filepath.Dir(path)}
	md, err := toml.Decode(text, c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var problems configError
	for _, k := range md.Undecoded() {
		problems = append(problems, fmt.Sprintf("%s: unknown key %q", path, k.String()))
	}
	problems = append(problems, c.validate()...)
	if len(problems) > 0 {
		return c, problems
	}
	return c, nil
}

// validate fills in defaults and returns every problem found.
func (c *Config) validate() []string {
	var p []string
	bad := func(format string, a ...any) { p = append(p, c.path+": "+fmt.Sprintf(format, a...)) }

	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
		if c.Hostname == "" {
			c.Hostname = "localhost"
		}
	}
	if !validDomain(c.Hostname) {
		bad("hostname %q is not a domain name", c.Hostname)
	}
	switch c.LogLevel {
	case "":
		c.LogLevel = "info"
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = defaultMaxMessageSize
	} else if c.MaxMessageSize < 0 {
		bad("max_message_size must be positive")
	}
	if c.MaxRecipients == 0 {
		c.MaxRecipients = defaultMaxRecipients
	} else if c.MaxRecipients < 0 {
		bad("max_recipients must be positive")
	}
	if c.MaxErrors == 0 {
		c.MaxErrors = defaultMaxErrors
	} else if c.MaxErrors < 0 {
		bad("max_errors must be positive")
	}
	if c.HardErrorLimit == 0 {
		c.HardErrorLimit = defaultHardErrorLimit
	} else if c.HardErrorLimit < 0 {
		bad("hard_error_limit must be positive")
	}
	switch c.SplitRecipients {
	case "":
		c.SplitRecipients = splitDefer
	case splitDefer, splitFanout:
	default:
		bad("split_recipients %q: want defer or fanout", c.SplitRecipients)
	}
	if len(c.RecipientDelimiter) > 1 || c.RecipientDelimiter == "@" {
		bad("recipient_delimiter %q must be one character other than @", c.RecipientDelimiter)
	}
	setDefault(&c.CommandTimeout, defaultCommandTimeout)
	setDefault(&c.UpstreamConnectTimeout, defaultUpstreamConnectTimeout)
	setDefault(&c.UpstreamCommandTimeout, defaultUpstreamCommandTimeout)
	setDefault(&c.UpstreamDataTimeout, defaultUpstreamDataTimeout)
	setDefault(&c.SessionTimeout, defaultSessionTimeout)

	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			bad("[tls] needs cert_file and key_file")
		}
		c.TLS.CertFile = c.resolve(c.TLS.CertFile)
		c.TLS.KeyFile = c.resolve(c.TLS.KeyFile)
	}
	if c.ProxyProtocol != nil {
		if len(c.ProxyProtocol.Trusted) == 0 {
			bad("[proxy_protocol] trusted is empty")
		}
		for _, s := range c.ProxyProtocol.Trusted {
			n, err := parseNet(s)
			if err != nil {
				bad("[proxy_protocol] trusted: %v", err)
				continue
			}
			c.ProxyProtocol.nets = append(c.ProxyProtocol.nets, n)
		}
	}
	if len(c.Mappings) == 0 {
		bad("no [[mapping]]: willi would route nothing")
	}
	for i := range c.Mappings {
		m := &c.Mappings[i]
		where := fmt.Sprintf("[[mapping]] #%d (%s)", i+1, m.Type)
		set := map[string]bool{"file": m.File != "", "dsn": m.DSN != "", "query": m.Query != "", "server": m.Server != ""}
		var want []string
		switch m.Type {
		case "csv":
			want = []string{"file"}
			m.File = c.resolve(m.File)
		case "mysql":
			want = []string{"dsn", "query"}
			if m.Query != "" && strings.Count(m.Query, "?") != 1 {
				bad("%s: query must have exactly one '?'", where)
			}
		case "static":
			want = []string{"server"}
			if m.Server != "" {
				if _, err := parseServers(m.Server); err != nil {
					bad("%s: %v", where, err)
				}
			}
		default:
			bad("[[mapping]] #%d: type %q: want csv, mysql or static", i+1, m.Type)
			continue
		}
		for _, k := range want {
			if !set[k] {
				bad("%s: %s is required", where, k)
			}
			delete(set, k)
		}
		for k, v := range set {
			if v {
				bad("%s: key %s does not apply to this type", where, k)
			}
		}
	}
	seen := map[string]bool{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		where := fmt.Sprintf("[[upstream]] #%d", i+1)
		srv, err := parseServers(u.Server)
		if err != nil || len(srv) != 1 {
			bad("%s: server %q must be one host[:port]", where, u.Server)
		} else {
			u.Server = srv[0].String()
			if seen[u.Server] {
				bad("%s: server %s is listed twice", where, u.Server)
			}
			seen[u.Server] = true
		}
		switch u.StartTLS {
		case "":
			u.StartTLS = tlsMirror
		case tlsMirror, tlsOpportunistic, tlsRequired, tlsNever:
		default:
			bad("%s: starttls %q: want mirror, opportunistic, required or never", where, u.StartTLS)
		}
		switch u.ClientAddress {
		case "":
			u.ClientAddress = addrXCLIENT
		case addrXCLIENT, addrProxyV1, addrProxyV2, addrNone:
		default:
			bad("%s: client_address %q: want xclient, proxy-v1, proxy-v2 or none", where, u.ClientAddress)
		}
		if u.TLSVerify && u.StartTLS == tlsNever {
			bad("%s: tls_verify with starttls = never", where)
		}
		for _, problem := range u.validateTLS(c.resolve) {
			bad("%s: %s", where, problem)
		}
	}
	return p
}

func setDefault(d *Duration, v time.Duration) {
	if d.Duration == 0 {
		d.Duration = v
	}
}

// resolve makes a path relative to the config file's folder.
func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// upstreamPolicy returns the [[upstream]] policy for one server, or the
// defaults when none is configured.
func (c *Config) upstreamPolicy(s Server) UpstreamConfig {
	key := s.String()
	for _, u := range c.Upstreams {
		if u.Server == key {
			return u
		}
	}
	return UpstreamConfig{Server: key, StartTLS: tlsMirror, ClientAddress: addrXCLIENT}
}

// parseNet accepts a CIDR or a single address.
func parseNet(s string) (*net.IPNet, error) {
	if _, n, err := net.ParseCIDR(s); err == nil {
		return n, nil
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	bits := 128
	if ip4 := ip.To4(); ip4 != nil {
		ip, bits = ip4, 32
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}, nil
}

// trusts reports whether ip must send a PROXY header.
func (p *ProxyConfig) trusts(ip net.IP) bool {
	if p == nil || ip == nil {
		return false
	}
	for _, n := range p.nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
