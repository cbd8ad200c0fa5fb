// Package deploy holds no code: its tests check the deployment files
// (compose.yaml, nats/, build.sh and the Dockerfile) against the code, since
// no Docker engine runs where the tests do.
package deploy

import (
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/natsperm"
)

// ourBinaries are the image's binaries built from this module, whose
// variables are checked against the Go code.
var ourBinaries = []string{"selector", "worker", "loadtargets"}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func loadCompose(t *testing.T) *yamlNode {
	t.Helper()
	doc, err := parseYAMLSubset(readFile(t, "compose.yaml"))
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	if doc.get("services") == nil || len(doc.get("services").Keys) == 0 {
		t.Fatal("compose.yaml has no services")
	}
	return doc
}

// goStrings returns every double-quoted string literal and struct tag
// value of the module's non-test Go files, for looking variables up.
func goStrings(t *testing.T) map[string]bool {
	t.Helper()
	lit := regexp.MustCompile(`"([A-Z][A-Z0-9_]*)"`)
	out := map[string]bool{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// builtBinaries returns the binaries deploy/build.sh writes, and checks
// that the Dockerfile runs it and copies each of them.
func builtBinaries(t *testing.T) []string {
	t.Helper()
	script := readFile(t, "build.sh")
	var bins []string
	if m := regexp.MustCompile(`(?m)^for cmd in ([a-z ]+); do`).FindStringSubmatch(script); m != nil {
		for _, b := range strings.Fields(m[1]) {
			if _, err := os.Stat(filepath.Join("..", "cmd", b)); err != nil {
				t.Errorf("build.sh builds ./cmd/%s, which does not exist", b)
			}
			bins = append(bins, b)
		}
	}
	for _, m := range regexp.MustCompile(`-o "\$out/([a-z-]+)" [a-z]`).FindAllStringSubmatch(script, -1) {
		bins = append(bins, m[1])
	}
	if len(bins) < 4 {
		t.Fatalf("build.sh builds %v; want the selector, worker, loadtargets and nats-server", bins)
	}
	df := readFile(t, filepath.Join("..", "Dockerfile"))
	if !strings.Contains(df, "RUN sh deploy/build.sh /out") {
		t.Error("the Dockerfile does not run deploy/build.sh /out")
	}
	for _, b := range bins {
		if !strings.Contains(df, "/out/"+b+" ") && !strings.Contains(df, "/out/"+b+"\n") {
			t.Errorf("the Dockerfile does not copy /out/%s into the image", b)
		}
	}
	return bins
}

var interp = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// TestComposeMatchesCode: every binary, path, variable, port and user the
// Compose file names exists and agrees with the code, the image's build
// and the NATS configuration.
func TestComposeMatchesCode(t *testing.T) {
	doc := loadCompose(t)
	bins := builtBinaries(t)
	known := goStrings(t)
	conf := readFile(t, filepath.Join("nats", "nats.conf")) + readFile(t, filepath.Join("nats", "accounts.conf"))
	confVars := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m):\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*$`).FindAllStringSubmatch(conf, -1) {
		confVars[m[1]] = true
	}
	natsHTTP := regexp.MustCompile(`(?m)^http:\s*[0-9.]*:(\d+)`).FindStringSubmatch(conf)
	natsClient := regexp.MustCompile(`(?m)^listen:\s*[0-9.]*:(\d+)`).FindStringSubmatch(conf)
	if natsHTTP == nil || natsClient == nil {
		t.Fatal("nats.conf has no http or listen port")
	}
	services := doc.get("services")
	volumes := doc.get("volumes")
	passwords := map[string]string{} // password variable -> interpolation, as the NATS servers get it
	var workerHosts, workerRAM, selectorIDs []string

	for _, name := range services.Keys {
		svc := services.get(name)
		t.Run(name, func(t *testing.T) {
			if svc.str("image") != "taskselector:local" || svc.str("build", "context") != ".." || svc.str("build", "dockerfile") != "Dockerfile" {
				t.Errorf("want the image taskselector:local built from ../Dockerfile")
			}
			entry := svc.get("entrypoint").strings()
			if len(entry) == 0 || !strings.HasPrefix(entry[0], "/usr/local/bin/") {
				t.Fatalf("entrypoint %v: want a binary of /usr/local/bin", entry)
			}
			bin := strings.TrimPrefix(entry[0], "/usr/local/bin/")
			if !slices.Contains(bins, bin) {
				t.Fatalf("entrypoint %s is not built into the image (%v)", bin, bins)
			}
			env := svc.get("environment")
			vars := map[string]string{}
			if env != nil {
				for _, k := range env.Keys {
					vars[k] = env.str(k)
				}
			}
			for k, v := range vars {
				for _, m := range interp.FindAllStringSubmatch(v, -1) {
					if !strings.HasPrefix(m[1], "TS_") {
						t.Errorf("%s interpolates %s; only the TS_* passwords come from the outside", k, m[1])
					}
				}
				if strings.Contains(interp.ReplaceAllString(v, ""), "$") {
					t.Errorf("%s: %q holds a '$' that is not a ${VAR:-default} interpolation", k, v)
				}
			}
			if bin == "nats-server" {
				checkNATSService(t, svc, entry, vars, confVars)
				for k, v := range vars {
					if strings.HasPrefix(k, "TS_") {
						if prev, ok := passwords[k]; ok && prev != v {
							t.Errorf("%s is %q here and %q on another node", k, v, prev)
						}
						passwords[k] = v
					}
				}
			} else {
				for k := range vars {
					if !known[k] {
						t.Errorf("%s is set, but no Go code reads it", k)
					}
				}
				checkClient(t, vars, services, natsClient[1])
			}
			for _, v := range svc.get("volumes").strings() {
				src, _, _ := strings.Cut(v, ":")
				if strings.HasPrefix(src, ".") {
					if _, err := os.Stat(src); err != nil {
						t.Errorf("volume %s: %v", v, err)
					}
				} else if volumes.get(src) == nil {
					t.Errorf("volume %s: %s is not a declared volume", v, src)
				}
			}
			if dep := svc.get("depends_on"); dep != nil {
				for _, d := range dep.Keys {
					if services.get(d) == nil {
						t.Errorf("depends on %s, which is no service", d)
					}
					if c := dep.str(d, "condition"); c == "service_healthy" && services.get(d, "healthcheck") == nil {
						t.Errorf("waits for %s to be healthy, which has no health check", d)
					}
				}
			}
			if hc := svc.get("healthcheck", "test").strings(); hc != nil {
				checkHealth(t, hc, bin, vars, bins, natsHTTP[1])
			}
			switch bin {
			case "worker":
				workerHosts = append(workerHosts, vars["WORKER_HOST"])
				workerRAM = append(workerRAM, vars["WORKER_RAM_MIB"])
			case "selector":
				selectorIDs = append(selectorIDs, vars["SELECTOR_ID"])
				if vars["SELECTOR_REPLICAS"] != "3" {
					t.Errorf("SELECTOR_REPLICAS = %q, want 3 on a 3-node cluster", vars["SELECTOR_REPLICAS"])
				}
			}
		})
	}

	// Every password the clients use is given to the servers, identically.
	for _, name := range services.Keys {
		svc := services.get(name)
		pw := svc.str("environment", "NATS_PASSWORD")
		if pw == "" {
			continue
		}
		m := interp.FindStringSubmatch(pw)
		if m == nil || passwords[m[1]] != pw {
			t.Errorf("%s: NATS_PASSWORD %q is not what the NATS servers get as its variable (%v)", name, pw, passwords)
		}
	}
	for v := range confVars {
		if v != "NATS_SERVER_NAME" && passwords[v] == "" {
			t.Errorf("the NATS configuration reads $%s, which no NATS service sets", v)
		}
	}

	// Three workers of different sizes, the hosts of the committed users;
	// two selectors with distinct ids.
	accounts := readFile(t, filepath.Join("nats", "accounts.conf"))
	for _, h := range workerHosts {
		if !strings.Contains(accounts, `user: "`+natsperm.WorkerUser(h)+`"`) {
			t.Errorf("worker host %s has no user in accounts.conf", h)
		}
	}
	if got := strings.Count(accounts, `user: "worker-`); got != len(workerHosts) {
		t.Errorf("accounts.conf has %d worker users, compose.yaml %d workers", got, len(workerHosts))
	}
	slices.Sort(workerRAM)
	if len(workerHosts) != 3 || len(slices.Compact(workerRAM)) != 3 {
		t.Errorf("workers %v with RAM %v: want three of different sizes", workerHosts, workerRAM)
	}
	slices.Sort(selectorIDs)
	if len(selectorIDs) != 2 || len(slices.Compact(selectorIDs)) != 2 || selectorIDs[0] == "" {
		t.Errorf("selector ids %v: want two distinct", selectorIDs)
	}
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		if services.get(n) == nil || !strings.Contains(conf, "nats-route://"+n+":") {
			t.Errorf("%s: want a NATS service and a route to it in nats.conf", n)
		}
	}
}

// checkNATSService checks a NATS node: it reads the committed configuration
// through a bind mount, has its own name and a volume for /data, and sets
// exactly the variables the configuration reads.
func checkNATSService(t *testing.T, svc *yamlNode, entry []string, vars map[string]string, confVars map[string]bool) {
	t.Helper()
	i := slices.Index(entry, "--config")
	if i < 0 || i+1 >= len(entry) {
		t.Fatalf("entrypoint %v: want --config PATH", entry)
	}
	cfgPath := entry[i+1]
	mounted := false
	for _, v := range svc.get("volumes").strings() {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") && filepath.Join(parts[1], filepath.Base(cfgPath)) == cfgPath {
			if _, err := os.Stat(filepath.Join(parts[0], filepath.Base(cfgPath))); err != nil {
				t.Errorf("%s is mounted from %s, which lacks it: %v", cfgPath, parts[0], err)
			}
			mounted = true
		}
		if len(parts) >= 2 && parts[1] == "/data" && strings.HasPrefix(parts[0], ".") {
			t.Errorf("the JetStream store /data is a bind mount (%s); want a named volume", v)
		}
	}
	if !mounted {
		t.Errorf("%s is not mounted from the repository", cfgPath)
	}
	data := false
	for _, v := range svc.get("volumes").strings() {
		parts := strings.Split(v, ":")
		data = data || len(parts) >= 2 && parts[1] == "/data"
	}
	if !data {
		t.Errorf("no volume on /data, the JetStream store")
	}
	for k := range vars {
		if !confVars[k] {
			t.Errorf("%s is set, but the NATS configuration does not read it", k)
		}
	}
	for v := range confVars {
		if _, ok := vars[v]; !ok {
			t.Errorf("the NATS configuration reads $%s, which is not set: the server would not start", v)
		}
	}
}

// checkClient checks a client's NATS settings: the URLs name NATS services
// on the client port, and the user and its password variable are those of
// its role.
func checkClient(t *testing.T, vars map[string]string, services *yamlNode, clientPort string) {
	t.Helper()
	for _, u := range strings.Split(vars["NATS_URL"], ",") {
		pu, err := url.Parse(u)
		if err != nil || pu.User != nil {
			t.Errorf("NATS_URL part %q: want nats://service:port without credentials", u)
			continue
		}
		if services.get(pu.Hostname()) == nil || pu.Port() != clientPort {
			t.Errorf("NATS_URL part %q: want a NATS service on port %s", u, clientPort)
		}
	}
	user := vars["NATS_USER"]
	want := map[string]string{natsperm.SelectorUser: natsperm.SelectorPasswordVar, natsperm.OperatorUser: natsperm.OperatorPasswordVar}
	if h := vars["WORKER_HOST"]; h != "" {
		if user != natsperm.WorkerUser(h) {
			t.Errorf("NATS_USER %q, want %q for host %q", user, natsperm.WorkerUser(h), h)
		}
		want[user] = natsperm.WorkerPasswordVar(h)
	}
	m := interp.FindStringSubmatch(vars["NATS_PASSWORD"])
	if m == nil || want[user] == "" || m[1] != want[user] {
		t.Errorf("NATS_USER %q with NATS_PASSWORD %q: want the password from %s", user, vars["NATS_PASSWORD"], want[user])
	}
}

// checkHealth checks a health check: the image's own probe, on the port the
// service listens on, at /readyz for a selector.
func checkHealth(t *testing.T, hc []string, bin string, vars map[string]string, bins []string, natsHTTP string) {
	t.Helper()
	if len(hc) != 4 || hc[0] != "CMD" || hc[1] != "/usr/local/bin/selector" || hc[2] != "-probe" || !slices.Contains(bins, "selector") {
		t.Fatalf("health check %v: want [CMD /usr/local/bin/selector -probe URL]", hc)
	}
	u, err := url.Parse(hc[3])
	if err != nil {
		t.Fatalf("health check URL %q: %v", hc[3], err)
	}
	switch bin {
	case "selector":
		_, port, err := net.SplitHostPort(vars["SELECTOR_HTTP_LISTEN"])
		if err != nil || u.Port() != port || u.Path != "/readyz" || u.Query().Get("role") != "any" {
			t.Errorf("health check %s: want /readyz?role=any on SELECTOR_HTTP_LISTEN's port (%q)", hc[3], vars["SELECTOR_HTTP_LISTEN"])
		}
	case "nats-server":
		if u.Port() != natsHTTP || u.Path != "/healthz" {
			t.Errorf("health check %s: want /healthz on the monitoring port %s", hc[3], natsHTTP)
		}
	}
}

// TestYAMLSubsetRefuses: the reader refuses what it does not understand
// instead of misreading it.
func TestYAMLSubsetRefuses(t *testing.T) {
	for _, src := range []string{
		"a: &x 1\nb: *x\n",
		"a:\n  <<: {b: 1}\n",
		"a: |\n  text\n",
		"a: 1\na: 2\n",
		"a:\n  - [1, 2]\n",
		"a:\n\tb: 1\n",
		"a:\n    b: 1\n  c: 2\n",
	} {
		if _, err := parseYAMLSubset(src); err == nil {
			t.Errorf("parsed %q", src)
		}
	}
	doc, err := parseYAMLSubset("# c\na: 'x # y' # z\nb:\n  - \"q\"\n  - r\nc: [\"s\", \"t\"]\nd:\n")
	if err != nil {
		t.Fatal(err)
	}
	if doc.str("a") != "x # y" || !slices.Equal(doc.get("b").strings(), []string{"q", "r"}) || !slices.Equal(doc.get("c").strings(), []string{"s", "t"}) || doc.get("d") == nil {
		t.Fatalf("parsed %+v", doc)
	}
}
