package natsconn

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// TestConnectWithCreds: a creds file (user JWT and seed) given as
// NATS_CREDS authenticates against a server in operator mode, and one for a
// user its account does not know is refused.
func TestConnectWithCreds(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	opKP, err := nkeys.CreateOperator()
	must(err)
	opPub, err := opKP.PublicKey()
	must(err)
	opJWT, err := jwt.NewOperatorClaims(opPub).Encode(opKP)
	must(err)
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	must(err)

	accKP, err := nkeys.CreateAccount()
	must(err)
	accPub, err := accKP.PublicKey()
	must(err)
	accJWT, err := jwt.NewAccountClaims(accPub).Encode(opKP)
	must(err)

	credsFor := func(name string, signer nkeys.KeyPair) string {
		userKP, err := nkeys.CreateUser()
		must(err)
		userPub, err := userKP.PublicKey()
		must(err)
		uc := jwt.NewUserClaims(userPub)
		uc.IssuerAccount = accPub
		userJWT, err := uc.Encode(signer)
		must(err)
		seed, err := userKP.Seed()
		must(err)
		creds, err := jwt.FormatUserConfig(userJWT, seed)
		must(err)
		return writeFile(t, dir, name+".creds", creds)
	}
	good := credsFor("good", accKP)
	otherAcc, err := nkeys.CreateAccount()
	must(err)
	forged := credsFor("forged", otherAcc) // signed by an account the operator never issued

	resolver := &server.MemAccResolver{}
	must(resolver.Store(accPub, accJWT))
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		TrustedOperators: []*jwt.OperatorClaims{opClaims}, AccountResolver: resolver})
	must(err)
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	connect := func(path string, wait time.Duration) error {
		a := Auth{Creds: path}
		must(a.Check())
		o, err := a.Options()
		must(err)
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		nc, err := Connect(ctx, srv.ClientURL(), "creds", slog.New(slog.DiscardHandler), nil, nil, o...)
		if err == nil {
			nc.Close()
		}
		return err
	}
	if err := connect(good, 10*time.Second); err != nil {
		t.Fatalf("with a good creds file: %v", err)
	}
	if err := connect(forged, 500*time.Millisecond); err == nil {
		t.Fatal("connected with a user of an account the operator did not issue")
	}
}
