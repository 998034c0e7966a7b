package rotate

import "apigee-timescale/shared/scram"

// Test seams. Login roles are cluster-wide and shared by every test database
// on a server, so tests rotate a pair of their own instead of
// apigee_ingest_a/_b; the production code has no knob for it.

// SetLogins makes s alternate between logins a and b.
func SetLogins(s *Service, a, b string) { s.logins = [2]string{a, b} }

// SetAfterStep installs fn, called after the steps create, set and test and
// right after the new version is added ("add", inside finish). An error it
// returns stops the run there, as a crash would: nothing after it runs.
func SetAfterStep(s *Service, fn func(point string) error) { s.afterStep = fn }

// SetPasswordSource replaces the password generator, e.g. to record what was
// generated and look for it in logs and answers.
func SetPasswordSource(s *Service, fn func() (string, error)) { s.genPassword = fn }

// NewPassword is the production generator.
var NewPassword = scram.NewPassword
