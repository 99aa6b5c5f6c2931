// Package reclaim frees disk on a CI host without throwing its image cache
// away: it is the sanctioned replacement for "docker image prune -af".
//
// It measures the filesystem that holds the engine's data root and acts
// when usage reaches a high-water mark (or free bytes or inodes fall under
// a floor), then removes images one at a time, dangling ones first and then
// the least recently used, until usage is at or below a low-water mark and
// the floors hold (the kubelet's image garbage collection works the same
// way). Last use comes from the engine's events, kept in a small state file
// and resynced from the container list on every pass, because events can be
// dropped. BuildKit's cache is kept within a budget, before any image, by
// dockerd's own budgeted build prune.
//
// The planner (NewPlan) is pure: given images, containers, recorded use,
// protection, CI jobs and usage, it returns the ordered plan. Reclaimer
// does the engine I/O around it.
//
// What reclaim must never do, whatever it is asked:
//   - call an image prune: it removes images one by one, by ID, so the
//     engine never applies -a semantics on its behalf; and never a build
//     prune with all, or without a budget;
//   - touch volumes, containers or networks;
//   - force a deletion: a conflict (an image gained a container or a child)
//     or a denial by an authorization plugin is skipped and reported;
//   - act while a CI run holds image deletes (active, or in its teardown
//     grace) below the critical mark, or when it cannot tell whether one
//     does; at or above it, remove an image such a job uses, and delete
//     without the guard's grant for exactly that image;
//   - prune the build cache while a CI job is active;
//   - remove an image used by any container in any state, a protected image,
//     an image first seen or last used less than the minimum age ago, or one
//     of its repository's most recently used tags it is told to keep.
//
// Deletions go through the engine's API like any other client's, so
// prune-guard's own authorization policy applies to them too.
package reclaim
