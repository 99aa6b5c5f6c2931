//go:build !race

package auditlog

const raceDetector = false
