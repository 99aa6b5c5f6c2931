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
	// OpBuildPrune is POST /build/prune without all, or gRPC
	// moby.buildkit.v1.Control/Prune without all: unused build cache that
	// no image shares, internal and frontend records kept.
	OpBuildPrune
	// OpBuildPruneAll is POST /build/prune with all, or Control/Prune with
	// all: every unused cache record.
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
	// include a build-cache prune) is invisible to it. In proxy mode it is
	// also gRPC Control/Session, the same session tunnelled in a gRPC
	// stream.
	OpBuildKitStream
	// OpBuildKitHistory is gRPC Control/UpdateBuildHistory: it deletes or
	// pins records of BuildKit's build history, not build cache.
	OpBuildKitHistory
	// OpGRPCUnknown is a gRPC call to a method prune-guard does not know
	// (a service an engine extension adds, a method of a newer BuildKit),
	// so it cannot tell what the call removes.
	OpGRPCUnknown
	// OpImagePull is POST /images/create with fromImage: the daemon pulls
	// the reference Classification.Target names. It removes nothing; the
	// guard counts it for cache accounting and never refuses it, and a
	// policy cannot name it.
	OpImagePull

	numOperations
)

// opInfo is everything prune-guard knows about an operation, in one place.
type opInfo struct {
	// name is the stable name policy files and the audit log use.
	name string
	// describe is the operation in an operator's words, for messages.
	describe string
	// destructive operations can delete something prune-guard guards (or
	// cannot be known not to); only they cost an engine query or an audit
	// line under the default settings.
	destructive bool
	// prune operations form the policy group "any-prune".
	prune bool
	// grace operations remove images: a CI job still counts as active for
	// them during its teardown grace after its last object is gone.
	grace bool
	// scopable prunes remove only objects that carry every label of their
	// positive label filter, so during a run one scoped to labels no
	// active job carries cannot touch the run (condition run-in-scope).
	scopable bool
}

var operations = [numOperations]opInfo{
	OpOther:           {name: "other", describe: "request"},
	OpUnknown:         {name: "unknown", describe: "unclassifiable request", destructive: true},
	OpImagePrune:      {name: "image-prune", describe: "image prune", destructive: true, prune: true, grace: true, scopable: true},
	OpImagePruneAll:   {name: "image-prune-all", describe: "image prune --all", destructive: true, prune: true, grace: true},
	OpImageDelete:     {name: "image-delete", describe: "image delete", destructive: true, grace: true},
	OpBuildPrune:      {name: "build-prune", describe: "build cache prune", destructive: true, prune: true},
	OpBuildPruneAll:   {name: "build-prune-all", describe: "build cache prune --all", destructive: true, prune: true},
	OpContainerPrune:  {name: "container-prune", describe: "container prune", destructive: true, prune: true, scopable: true},
	OpNetworkPrune:    {name: "network-prune", describe: "network prune", destructive: true, prune: true, scopable: true},
	OpVolumePrune:     {name: "volume-prune", describe: "volume prune", destructive: true, prune: true, scopable: true},
	OpVolumePruneAll:  {name: "volume-prune-all", describe: "volume prune --all", destructive: true, prune: true},
	OpPluginChange:    {name: "plugin-change", describe: "plugin change", destructive: true},
	OpBuildKitStream:  {name: "buildkit-stream", describe: "BuildKit session"},
	OpBuildKitHistory: {name: "buildkit-history", describe: "BuildKit build history update"},
	OpGRPCUnknown:     {name: "grpc-unknown", describe: "call to unknown gRPC method", destructive: true},
	OpImagePull:       {name: "image-pull", describe: "image pull"},
}

func (op Operation) info() opInfo {
	if op < numOperations {
		return operations[op]
	}
	return opInfo{name: fmt.Sprintf("Operation(%d)", uint8(op)), describe: "request", destructive: true}
}

// String returns the operation's stable name, the one policy files and the
// audit log use.
func (op Operation) String() string { return op.info().name }

// Destructive reports whether the operation can delete something prune-guard
// guards (or cannot be known not to). Only destructive requests cost an
// engine query or an audit line under the default settings.
func (op Operation) Destructive() bool { return op.info().destructive }

// Describe returns the operation in an operator's words, for messages.
func (op Operation) Describe() string { return op.info().describe }

// Grace reports whether a CI job still counts as active for op during its
// teardown grace: true for the operations that remove images.
func (op Operation) Grace() bool { return op.info().grace }

// Scopable reports whether a positive label filter limits what op removes to
// objects carrying those labels, so that a scoped op cannot touch a run
// whose objects do not carry them.
func (op Operation) Scopable() bool { return op.info().scopable }

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
var AnyPrune = func() OpSet {
	var s OpSet
	for op, info := range operations {
		if info.prune {
			s |= 1 << op
		}
	}
	return s
}()

// GRPCOps are the operations a gRPC call can be classified as and a policy
// can name: only rules matching these may limit themselves to gRPC methods.
var GRPCOps = Ops(OpBuildPrune, OpBuildPruneAll, OpBuildKitStream, OpBuildKitHistory, OpGRPCUnknown)

// opGroups are names that stand for several operations in a policy.
var opGroups = map[string]OpSet{
	"any-prune": AnyPrune,
}

// ParseOperation returns the operation or group a policy names.
func ParseOperation(name string) (OpSet, error) {
	if s, ok := opGroups[name]; ok {
		return s, nil
	}
	if name == OpImagePull.String() {
		return 0, fmt.Errorf("operation %s is counted (cache accounting), never decided: a policy cannot name it", name)
	}
	for op, info := range operations {
		if info.name == name && policyNamed(Operation(op)) {
			return Ops(Operation(op)), nil
		}
	}
	return 0, fmt.Errorf("unknown operation %q (valid: %s)", name, strings.Join(OperationNames(), ", "))
}

// policyNamed reports whether a policy may name op: "other" would match all
// traffic, "unknown" is always refused by the built-in fail-closed rule, and
// "image-pull" is counted, never decided (a pull removes nothing, and the
// accounting must not be able to refuse one).
func policyNamed(op Operation) bool { return op != OpOther && op != OpUnknown && op != OpImagePull }

// OperationNames lists every name ParseOperation accepts, sorted.
func OperationNames() []string {
	var names []string
	for op, info := range operations {
		if policyNamed(Operation(op)) {
			names = append(names, info.name)
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
