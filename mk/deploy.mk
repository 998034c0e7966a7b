# Deployment to Google Cloud (deploy/gcp/README.md).
.PHONY: deploy deploy-dry-run shellcheck

# The configuration file, documented in deploy/gcp/config.env.example.
DEPLOY_CONFIG ?= deploy/gcp/config.env

# deploy creates or updates everything that differs from the configuration;
# a second run changes nothing.
deploy:
	deploy/gcp/deploy.sh --config $(DEPLOY_CONFIG)

# deploy-dry-run reads the project and prints every command that would change it.
deploy-dry-run:
	deploy/gcp/deploy.sh --config $(DEPLOY_CONFIG) --dry-run

# shellcheck lints every shell script of the project (Debian: apt-get install shellcheck).
shellcheck:
	shellcheck deploy/gcp/*.sh deploy/apigee/*.sh deploy/local/*.sh
