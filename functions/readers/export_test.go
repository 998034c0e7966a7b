package readers

// LockKey is the advisory lock every run takes, for tests that hold it.
const LockKey = lockKey

// Wanted is wanted, for the table test of attribute values.
var Wanted = wanted
