package envcfg

import (
	"errors"
	"testing"
	"time"
)

type spec struct {
	Timeout time.Duration `envconfig:"T_TIMEOUT" default:"3s" form:"a positive duration such as 3s"`
	Count   int           `envconfig:"T_COUNT" default:"1" form:"a whole number of at least 1"`
	Name    string        `envconfig:"T_NAME"`
}

func TestLoadDefaults(t *testing.T) {
	var s spec
	if err := Load(&s); err != nil {
		t.Fatal(err)
	}
	if s.Timeout != 3*time.Second || s.Count != 1 {
		t.Fatalf("defaults not applied: %+v", s)
	}
}

func TestLoadNamesVariableAndForm(t *testing.T) {
	for _, tc := range []struct{ key, val, want string }{
		{"T_TIMEOUT", "abc", `T_TIMEOUT: want a positive duration such as 3s, got "abc"`},
		{"T_COUNT", "1.5", `T_COUNT: want a whole number of at least 1, got "1.5"`},
	} {
		t.Run(tc.key, func(t *testing.T) {
			t.Setenv(tc.key, tc.val)
			var s spec
			err := Load(&s)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load = %v, want *Error", err)
			}
			if err.Error() != tc.want {
				t.Fatalf("error = %q, want %q", err, tc.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	s := spec{Count: 0}
	err := Check(&s, "Count", s.Count >= 1)
	if err == nil || err.Error() != `T_COUNT: want a whole number of at least 1, got "0"` {
		t.Fatalf("Check = %v", err)
	}
	if err := Check(&s, "Count", true); err != nil {
		t.Fatalf("Check(ok) = %v", err)
	}
}
