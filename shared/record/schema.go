package record

import _ "embed"

// JSONSchema is the apigee.call.v1 record as a JSON Schema (draft 2020-12),
// for tools outside the ingest path. Its $comment lists the rules only the
// Go validator can enforce; schema_test.go proves both agree on a corpus.
//
//go:embed apigee.call.v1.schema.json
var JSONSchema []byte
