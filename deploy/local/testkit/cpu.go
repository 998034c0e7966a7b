package testkit

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// BackendCPU returns the CPU time (user + system) that a server process on
// this machine has used, from /proc; false when it is not visible (a remote
// server, or no /proc). Benchmarks use it to say what the database spent,
// which its own statistics do not.
func BackendCPU(pid int) (time.Duration, bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name may hold spaces; the fields after it are fixed.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, false
	}
	var user, sys int64
	if _, err := fmt.Sscan(f[11], &user); err != nil {
		return 0, false
	}
	if _, err := fmt.Sscan(f[12], &sys); err != nil {
		return 0, false
	}
	// utime and stime are in USER_HZ ticks, 100 per second on Linux.
	return time.Duration(user+sys) * (time.Second / 100), true
}
