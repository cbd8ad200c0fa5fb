// Package envcfg loads configuration from environment variables with
// envconfig and turns every bad value into an error that names the variable
// and the form it accepts.
//
// Each field carries its variable in an `envconfig` tag and the accepted form,
// in words, in a `form` tag:
//
//	LaunchTimeout time.Duration `envconfig:"SELECTOR_LAUNCH_TIMEOUT" default:"3s" form:"a positive duration such as 3s or 500ms"`
package envcfg

import (
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Error is a bad setting: the variable, the form it accepts and what it held.
type Error struct {
	Var  string
	Form string
	Got  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: want %s, got %q", e.Var, e.Form, e.Got)
}

// Load fills spec, a pointer to a struct, from the environment.
func Load(spec any) error {
	err := envconfig.Process("", spec)
	if err == nil {
		return nil
	}
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		return &Error{Var: pe.KeyName, Form: formOf(spec, pe.FieldName), Got: pe.Value}
	}
	return fmt.Errorf("configuration: %w", err)
}

func formOf(spec any, field string) string {
	t := reflect.TypeOf(spec)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if f, ok := t.FieldByName(field); ok {
		if form := f.Tag.Get("form"); form != "" {
			return form
		}
		return "a value of type " + f.Type.String()
	}
	return "a valid value"
}

// Check returns an *Error for field of spec when ok is false; the variable
// and form come from the field's tags and got is the field's current value.
func Check(spec any, field string, ok bool) error {
	if ok {
		return nil
	}
	v := reflect.ValueOf(spec)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	f, found := v.Type().FieldByName(field)
	if !found {
		panic("envcfg: no field " + field)
	}
	return &Error{Var: f.Tag.Get("envconfig"), Form: formOf(spec, field), Got: show(v.FieldByName(field).Interface())}
}

func show(v any) string {
	if d, ok := v.(time.Duration); ok {
		return d.String()
	}
	return fmt.Sprint(v)
}
