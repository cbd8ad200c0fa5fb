package natsconn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/taskselector/taskselector/internal/envcfg"
)

const secret = "s3cr3t-Pa55"

// writeFile writes data to name in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSigned writes a self-signed certificate and its key as PEM files.
func selfSigned(t *testing.T, dir, name string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert = writeFile(t, dir, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	key = writeFile(t, dir, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return cert, key
}

// userSeed writes a fresh user nkey seed and returns its path and public key.
func userSeed(t *testing.T, dir string) (path, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	if pub, err = kp.PublicKey(); err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, "user.nk", append(seed, '\n')), pub
}

// TestAuthCheck: every bad combination is refused with an error naming the
// variable, and no error ever shows the password.
func TestAuthCheck(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "client")
	otherCert, _ := selfSigned(t, dir, "other")
	seed, _ := userSeed(t, dir)
	junk := writeFile(t, dir, "junk", []byte("not a credential\n"))
	creds := writeFile(t, dir, "user.creds", []byte("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n"))
	missing := filepath.Join(dir, "missing")

	for _, tc := range []struct {
		name    string
		auth    Auth
		wantVar string // "" when valid
	}{
		{"none", Auth{}, ""},
		{"user and password", Auth{User: "w", Password: secret}, ""},
		{"creds", Auth{Creds: creds}, ""},
		{"nkey seed", Auth{NKeySeed: seed}, ""},
		{"tls", Auth{TLSCA: cert, TLSCert: cert, TLSKey: key, User: "w", Password: secret}, ""},
		{"user without password", Auth{User: "w"}, "NATS_PASSWORD"},
		{"password without user", Auth{Password: secret}, "NATS_USER"},
		{"two identities", Auth{User: "w", Password: secret, NKeySeed: seed}, "NATS_CREDS"},
		{"creds missing", Auth{Creds: missing}, "NATS_CREDS"},
		{"creds not creds", Auth{Creds: junk}, "NATS_CREDS"},
		{"creds a directory", Auth{Creds: dir}, "NATS_CREDS"},
		{"seed not a seed", Auth{NKeySeed: junk}, "NATS_NKEY_SEED"},
		{"ca not pem", Auth{TLSCA: junk}, "NATS_TLS_CA"},
		{"ca missing", Auth{TLSCA: missing}, "NATS_TLS_CA"},
		{"cert without key", Auth{TLSCert: cert}, "NATS_TLS_KEY"},
		{"key without cert", Auth{TLSKey: key}, "NATS_TLS_CERT"},
		{"key does not match", Auth{TLSCert: otherCert, TLSKey: key}, "NATS_TLS_KEY"},
		{"key missing", Auth{TLSCert: cert, TLSKey: missing}, "NATS_TLS_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.auth.Check()
			if tc.wantVar == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				if _, err := tc.auth.Options(); err != nil {
					t.Fatalf("Options = %v", err)
				}
				return
			}
			var ae *AuthError
			if !errors.As(err, &ae) {
				t.Fatalf("Check = %v, want an *AuthError", err)
			}
			if !strings.Contains(err.Error(), tc.wantVar+": want ") {
				t.Fatalf("Check = %q, want it to name %s and its form", err, tc.wantVar)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("Check shows the password: %q", err)
			}
		})
	}
}

// TestAuthFromEnvironment: the variables fill an embedded Auth through
// envcfg, and String and slog never show the password.
func TestAuthFromEnvironment(t *testing.T) {
	var cfg struct {
		Auth
		Other string `envconfig:"T_OTHER"`
	}
	t.Setenv("NATS_USER", "selector")
	t.Setenv("NATS_PASSWORD", secret)
	if err := envcfg.Load(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.User != "selector" || cfg.Password != secret {
		t.Fatalf("loaded %+v", cfg.Auth)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("connecting", "auth", cfg.Auth)
	for _, s := range []string{cfg.String(), buf.String()} {
		if strings.Contains(s, secret) || !strings.Contains(s, "selector") {
			t.Fatalf("description %q shows the password or not the user", s)
		}
	}
	names := map[string]bool{}
	for _, v := range AuthVars() {
		if v.Form == "" {
			t.Fatalf("%s has no form", v.Name)
		}
		names[v.Name] = true
	}
	for _, n := range []string{"NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_NKEY_SEED", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"} {
		if !names[n] {
			t.Fatalf("AuthVars lacks %s", n)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://u:" + secret + "@nats-1:4222", "nats://nats-1:4222"},
		{"nats://" + secret + "@nats-1:4222,tls://a:" + secret + "@nats-2:4222", "nats://nats-1:4222,tls://nats-2:4222"},
		{"u:" + secret + "@host:4222", "(a URL with credentials that does not parse)"},
		{"", ""},
	} {
		got := RedactURL(tc.in)
		if got != tc.want || strings.Contains(got, secret) {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestConnectWithCredentials: each identity really authenticates against a
// server that requires it, and the wrong password is refused; the refusal
// logged while retrying does not show the password given in the URL.
func TestConnectWithCredentials(t *testing.T) {
	dir := t.TempDir()
	seed, pub := userSeed(t, dir)
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users:      []*server.User{{Username: "selector", Password: secret}},
		Nkeys:      []*server.NkeyUser{{Nkey: pub}},
		NoAuthUser: "",
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	for _, a := range []Auth{{User: "selector", Password: secret}, {NKeySeed: seed}} {
		if err := a.Check(); err != nil {
			t.Fatal(err)
		}
		o, err := a.Options()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		nc, err := Connect(ctx, srv.ClientURL(), "auth", slog.New(slog.DiscardHandler), nil, nil, o...)
		cancel()
		if err != nil {
			t.Fatalf("%v: %v", a, err)
		}
		nc.Close()
	}
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	bad := strings.Replace(srv.ClientURL(), "nats://", "nats://selector:wrong-"+secret+"@", 1)
	if nc, err := Connect(ctx, bad, "auth", slog.New(slog.NewTextHandler(&buf, nil)), nil, nil); err == nil {
		nc.Close()
		t.Fatal("connected with a wrong password")
	} else if strings.Contains(err.Error(), secret) || strings.Contains(buf.String(), secret) {
		t.Fatalf("the password shows in the error %q or the log %q", err, buf.String())
	}
	if !strings.Contains(buf.String(), "nats connect failed") {
		t.Fatalf("no retry logged: %q", buf.String())
	}
}

func TestAuthCheckURL(t *testing.T) {
	withUser := Auth{User: "w", Password: secret}
	for _, tc := range []struct {
		auth Auth
		url  string
		ok   bool
	}{
		{withUser, "nats://a:4222,nats://b:4222", true},
		{Auth{}, "nats://w:" + secret + "@a:4222", true}, // the URL's own credentials
		{Auth{TLSCA: "/ca.pem"}, "nats://w:" + secret + "@a:4222", true},
		{withUser, "nats://a:4222,nats://w:" + secret + "@b:4222", false},
		{Auth{NKeySeed: "/seed"}, "nats://token@a:4222", false},
	} {
		err := tc.auth.CheckURL(tc.url)
		if (err == nil) != tc.ok {
			t.Errorf("CheckURL(%q) with %v = %v, want ok %v", tc.url, tc.auth, err, tc.ok)
		}
		if err != nil && (strings.Contains(err.Error(), secret) || !strings.HasPrefix(err.Error(), "NATS_URL: want ")) {
			t.Errorf("CheckURL error %q shows a secret or names no variable", err)
		}
	}
}
