package readers

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	apigee "google.golang.org/api/apigee/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"apigee-timescale/shared/function"
)

// App is what the sync needs of an Apigee app.
type App struct {
	ID, Name, Status string
	Attributes       []Attribute
}

// Attribute is one custom attribute of an app.
type Attribute struct{ Name, Value string }

// Lister lists the organization's apps; APIClient is one, tests bring theirs.
type Lister interface {
	ListApps(ctx context.Context) ([]App, error)
}

// pageSize is the most apps.list returns per page.
const pageSize = 1000

// APIClient lists apps through the Apigee management API:
// GET v1/organizations/{org}/apps?expand=true&status=approved, every page.
type APIClient struct {
	svc *apigee.Service
	org string
}

// NewAPIClient returns a Lister for org. An endpoint (a stand-in) is reached
// without credentials; otherwise the default credentials (the function's
// service account) are used.
func NewAPIClient(ctx context.Context, org, endpoint string) (*APIClient, error) {
	var opts []option.ClientOption
	if endpoint != "" {
		opts = append(opts, option.WithEndpoint(endpoint), option.WithoutAuthentication(), option.WithHTTPClient(http.DefaultClient))
	}
	svc, err := apigee.NewService(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("apigee client: %w", err)
	}
	return &APIClient{svc: svc, org: org}, nil
}

// ListApps returns every approved app of the organization with its
// attributes. Revoked apps are left out by the API's status filter: to the
// sync they are gone. Any failed page fails the whole list, so that a
// partial list is never taken for deleted apps.
func (a *APIClient) ListApps(ctx context.Context) ([]App, error) {
	var apps []App
	call := a.svc.Organizations.Apps.List("organizations/" + a.org).Expand(true).IncludeCred(false).Status("approved").PageSize(pageSize)
	err := call.Pages(ctx, func(r *apigee.GoogleCloudApigeeV1ListAppsResponse) error {
		for _, x := range r.App {
			if x == nil {
				continue
			}
			app := App{ID: x.AppId, Name: x.Name, Status: x.Status}
			for _, at := range x.Attributes {
				if at != nil {
					app.Attributes = append(app.Attributes, Attribute{Name: at.Name, Value: at.Value})
				}
			}
			apps = append(apps, app)
		}
		return nil
	})
	if err != nil {
		return nil, classifyAPIError(err)
	}
	return apps, nil
}

// classifyAPIError marks what a retry may cure as unavailable: the API
// overloaded or down, or not reached at all. Its other answers (permission
// denied, no such organization) are configuration.
func classifyAPIError(err error) error {
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code != http.StatusTooManyRequests && ge.Code < 500 {
		return fmt.Errorf("apigee apps list: %w", err)
	}
	return fmt.Errorf("apigee apps list: %w: %w", function.ErrUnavailable, err)
}
