// Package reclaim frees disk on a CI host without throwing its image cache
// away: it is the sanctioned replacement for "docker image prune -af".
//
// It measures the filesystem that holds the engine's data root and acts only
// when usage reaches a high-water mark, then removes images one at a time,
// dangling ones first and then the least recently used, until usage is at or
// below a low-water mark (the kubelet's image garbage collection works the
// same way). Last use comes from the engine's events, kept in a small state
// file and resynced from the container list on every pass, because events
// can be dropped.
//
// The planner (Plan) is pure: given images, containers, recorded use,
// protection, active runs and usage, it returns the ordered plan. Reclaimer
// does the engine I/O around it.
//
// What reclaim must never do, whatever it is asked:
//   - call a prune endpoint: it removes images one by one, by ID, so the
//     engine never applies -a semantics on its behalf;
//   - touch build cache, volumes, containers or networks;
//   - force a deletion: a conflict (an image gained a container or a child)
//     or a denial by an authorization plugin is skipped and reported;
//   - act while a CI run is active, or when it cannot tell whether one is;
//   - remove an image used by any container in any state, a protected image,
//     or an image first seen or last used less than the minimum age ago.
//
// Deletions go through the engine's API like any other client's, so
// prune-guard's own authorization policy applies to them too.
package reclaim
