package deps

import (
	_ "cloud.google.com/go/cloudsqlconn"
	_ "cloud.google.com/go/pubsub/v2"
	_ "cloud.google.com/go/pubsub/v2/pstest"
	_ "cloud.google.com/go/secretmanager/apiv1"
	_ "cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	_ "github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
	_ "github.com/GoogleCloudPlatform/functions-framework-go/functions"
	_ "github.com/cloudevents/sdk-go/v2/event"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/pressly/goose/v3"
	_ "github.com/santhosh-tekuri/jsonschema/v6"
	_ "google.golang.org/api/idtoken"
	_ "google.golang.org/grpc"
)
