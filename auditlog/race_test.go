//go:build race

package auditlog

const raceDetector = true
