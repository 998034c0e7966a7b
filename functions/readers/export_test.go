package readers

// LockKey is the advisory lock every run takes, for tests that hold it.
const LockKey = lockKey
