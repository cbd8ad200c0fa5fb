package schemas

import (
	"maps"
	"slices"
)

// sortedKeys returns m's keys in order, so that the first error reported for
// a map does not depend on map iteration order.
func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(m))
}
