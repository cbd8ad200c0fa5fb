package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"reflect"
	"strings"

	"github.com/nats-io/nats.go"
)

// Auth is how a binary proves who it is to NATS, read from the environment
// by every binary that connects to a server it does not run itself. At most
// one identity is set: a creds file (a user JWT and its nkey seed, as nsc
// writes them), a user and password, or an nkey seed file. TLS is separate
// and combines with any of them: a CA to trust the server, and a client
// certificate with its key for servers that verify clients.
//
// Embed it in a configuration struct loaded with envconfig (or
// internal/envcfg): its fields carry their variables. Secrets never leave
// it: String and the errors of Check show whether a secret is set, never
// its value.
type Auth struct {
	Creds    string `envconfig:"NATS_CREDS" form:"the path of a readable NATS creds file (a user JWT and its nkey seed)"`
	User     string `envconfig:"NATS_USER" form:"a user name, set together with NATS_PASSWORD"`
	Password string `envconfig:"NATS_PASSWORD" form:"a password, set together with NATS_USER"`
	NKeySeed string `envconfig:"NATS_NKEY_SEED" form:"the path of a readable file holding a user nkey seed (SU...)"`
	TLSCA    string `envconfig:"NATS_TLS_CA" form:"the path of a readable PEM file of CA certificates"`
	TLSCert  string `envconfig:"NATS_TLS_CERT" form:"the path of a readable PEM client certificate, set together with NATS_TLS_KEY"`
	TLSKey   string `envconfig:"NATS_TLS_KEY" form:"the path of a readable PEM private key matching NATS_TLS_CERT"`
}

// AuthVar is one of Auth's environment variables with its accepted form.
type AuthVar struct {
	Name, Form string
}

// AuthVars lists Auth's variables, in the order of its fields, for usage
// texts and documentation.
func AuthVars() []AuthVar {
	t := reflect.TypeFor[Auth]()
	vars := make([]AuthVar, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		vars = append(vars, AuthVar{Name: f.Tag.Get("envconfig"), Form: f.Tag.Get("form")})
	}
	return vars
}

// AuthError is a bad credential setting: the variable, the form it accepts
// and why the value was refused. It never holds a secret.
type AuthError struct {
	Var, Form, Problem string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("%s: want %s, but %s", e.Var, e.Form, e.Problem)
}

// formOf returns the accepted form of variable v, from Auth's tags.
func formOf(v string) string {
	t := reflect.TypeFor[Auth]()
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("envconfig") == v {
			return f.Tag.Get("form")
		}
	}
	return "a valid value"
}

func authErr(v, problem string) error { return &AuthError{Var: v, Form: formOf(v), Problem: problem} }

// Check validates the settings: one identity at most, user and password
// together, certificate and key together, every file present, readable and
// of the right kind. Each error names its variable; none shows a secret.
func (a Auth) Check() error {
	var errs []error
	identities := 0
	if a.Creds != "" {
		identities++
	}
	if a.User != "" || a.Password != "" {
		identities++
	}
	if a.NKeySeed != "" {
		identities++
	}
	if identities > 1 {
		errs = append(errs, authErr("NATS_CREDS", "more than one of NATS_CREDS, NATS_USER/NATS_PASSWORD and NATS_NKEY_SEED is set; set one"))
	}
	switch {
	case a.User != "" && a.Password == "":
		errs = append(errs, authErr("NATS_PASSWORD", "it is empty while NATS_USER is set"))
	case a.User == "" && a.Password != "":
		errs = append(errs, authErr("NATS_USER", "it is empty while NATS_PASSWORD is set"))
	}
	if a.Creds != "" {
		if b, err := readFile("NATS_CREDS", a.Creds); err != nil {
			errs = append(errs, err)
		} else if !strings.Contains(string(b), "-----BEGIN NATS USER JWT-----") || !strings.Contains(string(b), "-----BEGIN USER NKEY SEED-----") {
			errs = append(errs, authErr("NATS_CREDS", fmt.Sprintf("%q holds no user JWT and nkey seed", a.Creds)))
		}
	}
	if a.NKeySeed != "" {
		if _, err := readFile("NATS_NKEY_SEED", a.NKeySeed); err != nil {
			errs = append(errs, err)
		} else if _, err := nats.NkeyOptionFromSeed(a.NKeySeed); err != nil {
			// The client's error says what is wrong without the seed.
			errs = append(errs, authErr("NATS_NKEY_SEED", fmt.Sprintf("%q holds no usable user seed (%v)", a.NKeySeed, err)))
		}
	}
	if a.TLSCA != "" {
		if b, err := readFile("NATS_TLS_CA", a.TLSCA); err != nil {
			errs = append(errs, err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			errs = append(errs, authErr("NATS_TLS_CA", fmt.Sprintf("%q holds no PEM certificate", a.TLSCA)))
		}
	}
	switch {
	case a.TLSCert != "" && a.TLSKey == "":
		errs = append(errs, authErr("NATS_TLS_KEY", "it is empty while NATS_TLS_CERT is set"))
	case a.TLSCert == "" && a.TLSKey != "":
		errs = append(errs, authErr("NATS_TLS_CERT", "it is empty while NATS_TLS_KEY is set"))
	case a.TLSCert != "":
		_, cerr := readFile("NATS_TLS_CERT", a.TLSCert)
		_, kerr := readFile("NATS_TLS_KEY", a.TLSKey)
		if cerr != nil || kerr != nil {
			errs = append(errs, cerr, kerr)
		} else if _, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey); err != nil {
			errs = append(errs, authErr("NATS_TLS_KEY", fmt.Sprintf("%q and %q are not a matching PEM certificate and key", a.TLSCert, a.TLSKey)))
		}
	}
	return errors.Join(errs...)
}

// readFile reads the file a variable names, and says why it cannot.
func readFile(v, path string) ([]byte, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, authErr(v, fmt.Sprintf("%q does not exist", path))
	case err != nil:
		return nil, authErr(v, fmt.Sprintf("%q cannot be read: %v", path, errors.Unwrap(err)))
	case !fi.Mode().IsRegular():
		return nil, authErr(v, fmt.Sprintf("%q is not a regular file", path))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, authErr(v, fmt.Sprintf("%q cannot be read: %v", path, errors.Unwrap(err)))
	}
	return b, nil
}

// CheckURL refuses a NATS URL (or list of them) that carries user
// information while a also names an identity: the client would use the
// URL's and silently ignore a's. The error names NATS_URL and shows the URL
// without its user information.
func (a Auth) CheckURL(natsURL string) error {
	if a.Creds == "" && a.User == "" && a.NKeySeed == "" {
		return nil
	}
	for part := range strings.SplitSeq(natsURL, ",") {
		if u, err := url.Parse(strings.TrimSpace(part)); err == nil && u.User == nil {
			continue
		}
		return &AuthError{Var: "NATS_URL", Form: "a NATS URL without user information when NATS_CREDS, NATS_USER or NATS_NKEY_SEED is set",
			Problem: fmt.Sprintf("%q carries some (or does not parse), and it would override them", RedactURL(natsURL))}
	}
	return nil
}

// IsZero reports whether no setting is made.
func (a Auth) IsZero() bool { return a == Auth{} }

// Options returns the client options that present a's identity and TLS
// settings; a must have passed Check.
func (a Auth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case a.Creds != "":
		opts = append(opts, nats.UserCredentials(a.Creds))
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	case a.NKeySeed != "":
		o, err := nats.NkeyOptionFromSeed(a.NKeySeed)
		if err != nil {
			return nil, fmt.Errorf("natsconn: NATS_NKEY_SEED: %w", err)
		}
		opts = append(opts, o)
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	return opts, nil
}

// String describes the settings for logs without their secrets: which
// identity is used, by user name or file path, and which TLS files.
func (a Auth) String() string {
	var parts []string
	switch {
	case a.Creds != "":
		parts = append(parts, "creds file "+a.Creds)
	case a.User != "":
		parts = append(parts, "user "+a.User+" with a password")
	case a.NKeySeed != "":
		parts = append(parts, "nkey seed file "+a.NKeySeed)
	default:
		parts = append(parts, "no credentials")
	}
	if a.TLSCA != "" {
		parts = append(parts, "TLS CA "+a.TLSCA)
	}
	if a.TLSCert != "" {
		parts = append(parts, "TLS client certificate "+a.TLSCert)
	}
	return strings.Join(parts, ", ")
}

// LogValue keeps secrets out of structured logs: an Auth logged with slog
// shows String.
func (a Auth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// RedactURL strips the user information (user, password or token) from a
// NATS URL, or from each of a comma-separated list of them, so that it can
// be logged. A part that does not parse as a URL is replaced whole when it
// holds an '@', since it may hold a secret.
func RedactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		switch {
		case err != nil || (u.Host == "" && strings.Contains(p, "@")):
			if strings.Contains(p, "@") {
				parts[i] = "(a URL with credentials that does not parse)"
			} else {
				parts[i] = p
			}
		case u.User != nil:
			u.User = nil
			parts[i] = u.String()
		default:
			parts[i] = p
		}
	}
	return strings.Join(parts, ",")
}
