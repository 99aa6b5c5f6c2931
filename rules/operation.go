package rules

import (
	"fmt"
	"sort"
	"strings"
)

// Operation is what a request would make the daemon do, as far as the policy
// cares. The zero value is OpOther: a request that destroys nothing.
type Operation uint8

const (
	// OpOther is every request that deletes nothing prune-guard guards.
	OpOther Operation = iota
	// OpUnknown is a plugin call that cannot be classified at all (empty or
	// malformed). It is always denied.
	OpUnknown
	// OpImagePrune is POST /images/prune that removes dangling images only.
	OpImagePrune
	// OpImagePruneAll is POST /images/prune that also removes tagged, unused
	// images (dangling=false, the CLI's -a).
	OpImagePruneAll
	// OpImageDelete is DELETE /images/{name} (docker rmi).
	OpImageDelete
	// OpBuildPrune is POST /build/prune without all: dangling build cache.
	OpBuildPrune
	// OpBuildPruneAll is POST /build/prune with all: every unused cache record.
	OpBuildPruneAll
	// OpContainerPrune is POST /containers/prune.
	OpContainerPrune
	// OpNetworkPrune is POST /networks/prune.
	OpNetworkPrune
	// OpVolumePrune is POST /volumes/prune that removes anonymous volumes only.
	OpVolumePrune
	// OpVolumePruneAll is POST /volumes/prune that also removes named volumes.
	OpVolumePruneAll
	// OpPluginChange disables, enables, removes, reconfigures, upgrades or
	// installs an engine plugin.
	OpPluginChange
	// OpBuildKitStream is POST /grpc or /session: a connection BuildKit takes
	// over (h2c). The plugin sees no body, so what runs inside (which can
	// include a build-cache prune) is invisible to it.
	OpBuildKitStream

	numOperations
)

var operationNames = [numOperations]string{
	OpOther:          "other",
	OpUnknown:        "unknown",
	OpImagePrune:     "image-prune",
	OpImagePruneAll:  "image-prune-all",
	OpImageDelete:    "image-delete",
	OpBuildPrune:     "build-prune",
	OpBuildPruneAll:  "build-prune-all",
	OpContainerPrune: "container-prune",
	OpNetworkPrune:   "network-prune",
	OpVolumePrune:    "volume-prune",
	OpVolumePruneAll: "volume-prune-all",
	OpPluginChange:   "plugin-change",
	OpBuildKitStream: "buildkit-stream",
}

// String returns the operation's stable name, the one policy files and the
// audit log use.
func (op Operation) String() string {
	if op < numOperations {
		return operationNames[op]
	}
	return fmt.Sprintf("Operation(%d)", uint8(op))
}

// Destructive reports whether the operation can delete something prune-guard
// guards (or cannot be known not to). Only destructive requests cost an
// engine query or an audit line under the default settings.
func (op Operation) Destructive() bool {
	return op != OpOther && op != OpBuildKitStream
}

// Describe returns the operation in an operator's words, for messages.
func (op Operation) Describe() string {
	switch op {
	case OpImagePrune:
		return "image prune"
	case OpImagePruneAll:
		return "image prune --all"
	case OpImageDelete:
		return "image delete"
	case OpBuildPrune:
		return "build cache prune"
	case OpBuildPruneAll:
		return "build cache prune --all"
	case OpContainerPrune:
		return "container prune"
	case OpNetworkPrune:
		return "network prune"
	case OpVolumePrune:
		return "volume prune"
	case OpVolumePruneAll:
		return "volume prune --all"
	case OpPluginChange:
		return "plugin change"
	case OpBuildKitStream:
		return "BuildKit session"
	case OpUnknown:
		return "unclassifiable request"
	}
	return "request"
}

// OpSet is a set of operations. A bit set keeps rule matching free of
// allocations on the request path.
type OpSet uint32

// Ops returns the set holding ops.
func Ops(ops ...Operation) OpSet {
	var s OpSet
	for _, op := range ops {
		s |= 1 << op
	}
	return s
}

// Has reports whether op is in the set.
func (s OpSet) Has(op Operation) bool { return s&(1<<op) != 0 }

// AnyPrune is every prune operation, the policy name "any-prune".
var AnyPrune = Ops(OpImagePrune, OpImagePruneAll, OpBuildPrune, OpBuildPruneAll,
	OpContainerPrune, OpNetworkPrune, OpVolumePrune, OpVolumePruneAll)

// opGroups are names that stand for several operations in a policy.
var opGroups = map[string]OpSet{
	"any-prune": AnyPrune,
}

// ParseOperation returns the operation or group a policy names.
func ParseOperation(name string) (OpSet, error) {
	if s, ok := opGroups[name]; ok {
		return s, nil
	}
	for op, n := range operationNames {
		if n == name && policyNamed(Operation(op)) {
			return Ops(Operation(op)), nil
		}
	}
	return 0, fmt.Errorf("unknown operation %q (valid: %s)", name, strings.Join(OperationNames(), ", "))
}

// policyNamed reports whether a policy may name op: "other" would match all
// traffic, and "unknown" is always refused by the built-in fail-closed rule.
func policyNamed(op Operation) bool { return op != OpOther && op != OpUnknown }

// OperationNames lists every name ParseOperation accepts, sorted.
func OperationNames() []string {
	var names []string
	for op, n := range operationNames {
		if policyNamed(Operation(op)) {
			names = append(names, n)
		}
	}
	for n := range opGroups {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// String lists the set's operation names, "any-prune" for that group.
func (s OpSet) String() string {
	if s == AnyPrune {
		return "any-prune"
	}
	var names []string
	for op := Operation(0); op < numOperations; op++ {
		if s.Has(op) {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, ",")
}
