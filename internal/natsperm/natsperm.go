// Package natsperm says what each role may do on NATS: the subjects a
// worker agent, the selector and an operator may publish and subscribe to,
// and renders them as the users of a NATS server configuration
// (deploy/nats/accounts.conf is its output, through cmd/natsusers).
//
// The roles:
//   - a worker (one NATS user per host) takes only its own host's launch,
//     kill, ps and helper requests, publishes only its own host's
//     heartbeats, host status and task events, sends requests to the
//     selector's alloc subject, and reads only its own inbox
//     (protocol.WorkerInbox). It also publishes on its own launch subject:
//     its fence barrier (package worker) travels there. It has no access to
//     JetStream's API or the buckets: its events reach the stream as plain
//     publishes.
//   - the selector owns the launch, kill, ps and helper subjects of every
//     host, reads every heartbeat, host status and alloc request, answers
//     status, and has the JetStream API and the buckets.
//   - an operator asks for status, reads everything under the prefix and
//     both buckets, writes the targets bucket, and lists services; it
//     cannot launch, kill, write the tasks bucket or delete streams.
//
// Every role may answer the requests it receives (allow_responses), which
// covers the micro services' $SRV discovery replies.
package natsperm

import (
	"fmt"
	"io"
	"strings"

	"github.com/taskselector/taskselector/protocol"
)

// Permissions are the subjects a user may publish to and subscribe to.
type Permissions struct {
	Publish, Subscribe []string
	// AllowResponses lets the user answer the requests it receives, on
	// their reply subjects, whatever those are.
	AllowResponses bool
}

// Worker returns the permissions of host's worker agent under prefix.
func Worker(prefix, host string) Permissions {
	s := protocol.NewSubjects(prefix)
	p, h := s.Prefix, protocol.EncodeName(host)
	return Permissions{
		Publish: []string{
			p + ".heartbeat." + h + ".>",
			p + ".host." + h,
			p + ".event." + h + ".>",
			p + ".launch." + h, // the fence barrier
			s.Alloc(),
		},
		Subscribe: []string{
			p + ".launch." + h,
			p + ".kill." + h,
			p + ".ps." + h,
			s.Helper(host),
			protocol.WorkerInbox(host) + ".>",
			"$SRV.>",
		},
		AllowResponses: true,
	}
}

// Selector returns the selector's permissions under prefix.
func Selector(prefix string) Permissions {
	s := protocol.NewSubjects(prefix)
	p := s.Prefix
	return Permissions{
		Publish: []string{
			p + ".launch.>",
			p + ".kill.>",
			p + ".ps.>",
			p + ".helper.>",
			"$JS.API.>",
			"$KV.>",
			"$JS.ACK.>",
			"$JS.FC.>",
		},
		Subscribe: []string{
			p + ".heartbeat.>",
			p + ".host.*",
			s.Status(),
			s.Alloc(),
			"_INBOX.>",
			"$SRV.>",
		},
		AllowResponses: true,
	}
}

// Operator returns an operator's permissions under prefix: status, read
// access, and writes to the targets bucket.
func Operator(prefix string) Permissions {
	p := protocol.NewSubjects(prefix).Prefix
	return Permissions{
		Publish: []string{
			p + ".selector.status",
			"$KV." + protocol.TargetsBucket + ".>",
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO.*",
			"$JS.API.STREAM.NAMES",
			"$JS.API.STREAM.LIST",
			"$JS.API.STREAM.MSG.GET.*",
			"$JS.API.DIRECT.GET.>",
			"$JS.API.CONSUMER.CREATE.>",
			"$JS.API.CONSUMER.INFO.>",
			"$JS.API.CONSUMER.NAMES.*",
			"$JS.API.CONSUMER.LIST.*",
			"$JS.FC.>",
			"$SRV.>",
		},
		Subscribe: []string{
			p + ".>",
			"_INBOX.>",
		},
		AllowResponses: false,
	}
}

// User is one NATS user of the configuration: its name, the environment
// variable its password is read from by the server, and its permissions.
type User struct {
	Name, PasswordVar string
	Permissions
}

// Account is the NATS account that holds every role's users.
const Account = "TASKSELECTOR"

// Names of the fixed users and of their password variables.
const (
	SelectorUser        = "selector"
	SelectorPasswordVar = "TS_SELECTOR_PASSWORD"
	OperatorUser        = "operator"
	OperatorPasswordVar = "TS_OPERATOR_PASSWORD"
)

// WorkerUser is the NATS user of host's worker agent.
func WorkerUser(host string) string { return "worker-" + protocol.EncodeName(host) }

// WorkerPasswordVar is the environment variable that holds the password of
// host's worker user, in the server's environment: TS_WORKER_PASSWORD_
// followed by the host's subject token with '-' and '=' turned into '_'.
func WorkerPasswordVar(host string) string {
	return "TS_WORKER_PASSWORD_" + strings.NewReplacer("-", "_", "=", "_").Replace(protocol.EncodeName(host))
}

// Users returns the selector, the operator and one worker per host, under
// prefix. Hosts must be distinct and their password variables too.
func Users(prefix string, hosts []string) ([]User, error) {
	users := []User{
		{Name: SelectorUser, PasswordVar: SelectorPasswordVar, Permissions: Selector(prefix)},
		{Name: OperatorUser, PasswordVar: OperatorPasswordVar, Permissions: Operator(prefix)},
	}
	seen := map[string]string{}
	for _, h := range hosts {
		if h == "" {
			return nil, fmt.Errorf("natsperm: empty host name")
		}
		v := WorkerPasswordVar(h)
		if other, ok := seen[v]; ok {
			return nil, fmt.Errorf("natsperm: hosts %q and %q share the password variable %s; rename one", other, h, v)
		}
		seen[v] = h
		users = append(users, User{Name: WorkerUser(h), PasswordVar: v, Permissions: Worker(prefix, h)})
	}
	return users, nil
}

// Render writes the accounts block of a NATS server configuration holding
// users in Account, with JetStream enabled for it. Passwords are variable
// references, which the server resolves from its environment.
func Render(w io.Writer, users []User, header string) error {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString("# " + line + "\n")
	}
	b.WriteString("accounts {\n  " + Account + " {\n    jetstream: enabled\n    users: [\n")
	for _, u := range users {
		fmt.Fprintf(&b, "      {\n        user: %q\n        password: $%s\n        permissions: {\n", u.Name, u.PasswordVar)
		list := func(name string, subjects []string) {
			fmt.Fprintf(&b, "          %s: { allow: [", name)
			for i, s := range subjects {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%q", s)
			}
			b.WriteString("] }\n")
		}
		list("publish", u.Publish)
		list("subscribe", u.Subscribe)
		if u.AllowResponses {
			b.WriteString("          allow_responses: true\n")
		}
		b.WriteString("        }\n      }\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
