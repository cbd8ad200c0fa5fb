package schemas

import (
	"embed"
	"io/fs"
	"slices"
	"strings"
)

// schemaFiles holds one JSON Schema (draft 2020-12) per message, named
// json/<message name>.schema.json, each with an "examples" array.
//
//go:embed json/*.schema.json
var schemaFiles embed.FS

const schemaSuffix = ".schema.json"

// Schema returns the JSON Schema of the message with the given name (as
// returned by MessageName, e.g. "heartbeat"), and whether there is one.
func Schema(name string) ([]byte, bool) {
	b, err := schemaFiles.ReadFile("json/" + name + schemaSuffix)
	if err != nil {
		return nil, false
	}
	return b, true
}

// SchemaNames lists, sorted, the names of the messages that have a schema.
func SchemaNames() []string {
	entries, err := fs.ReadDir(schemaFiles, "json")
	if err != nil {
		return nil // cannot happen: the directory is embedded
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), schemaSuffix); ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}
