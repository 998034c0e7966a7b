#!/usr/bin/env bash
# Builds the two shared flow bundles of apigee-timescale, imports them into
# an Apigee organization, deploys them to one environment with a service
# account that may publish to the topic, and attaches them to their flow
# hooks: apigee-timescale-target (target/sharedflowbundle) to the
# PostTargetFlowHook, where it keeps the target's status, then
# apigee-timescale-publish (sharedflowbundle) to the PostProxyFlowHook,
# where it publishes the record. See README.md for each Apigee API call.
#
#   deploy.sh                                  build, import, deploy, attach
#   deploy.sh --build-only OUT [TARGET_OUT]    only write the publishing
#                                              flow's zip to OUT (and the
#                                              target flow's to TARGET_OUT)
#
# Environment:
#   GCP_PROJECT   project that owns the Pub/Sub topic            (always)
#   PUBSUB_TOPIC  topic id, e.g. apigee-calls                    (always)
#   APIGEE_ORG    Apigee organization                            (deploy)
#   APIGEE_ENV    Apigee environment                             (deploy)
#   APIGEE_SA     service account email the shared flow runs as; it needs
#                 roles/pubsub.publisher on the topic, and the caller needs
#                 iam.serviceAccounts.actAs on it                 (deploy)
#   APIGEE_TOKEN  OAuth access token; default: gcloud auth print-access-token
#   APIGEE_API    API root; default https://apigee.googleapis.com/v1
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=apigee-timescale-publish
target_name=apigee-timescale-target

die() { echo "deploy.sh: $*" >&2; exit 1; }

build_only="" build_target=""
case "${1:-}" in
--build-only)
	[ -n "${2:-}" ] || die "--build-only needs an output file"
	build_only=$2
	build_target=${3:-}
	;;
"") ;;
*) die "usage: deploy.sh [--build-only OUT.zip [TARGET_OUT.zip]]" ;;
esac

: "${GCP_PROJECT:?set GCP_PROJECT to the project of the Pub/Sub topic}"
: "${PUBSUB_TOPIC:?set PUBSUB_TOPIC to the topic id}"
# Pub/Sub resource name rules; they also keep the values safe for sed.
[[ $GCP_PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "GCP_PROJECT '$GCP_PROJECT' is not a project id"
[[ $PUBSUB_TOPIC =~ ^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$ && $PUBSUB_TOPIC != goog* ]] ||
	die "PUBSUB_TOPIC '$PUBSUB_TOPIC' is not a valid topic id"

command -v zip >/dev/null || die "zip is required"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build_bundle SRC OUT: copies the bundle directory SRC, fills in the topic
# placeholders and zips it with sharedflowbundle/ at the root, as the import
# API expects.
build_bundle() {
	local src=$1 out=$2 stage="$work/stage"
	rm -rf "$stage"
	mkdir -p "$stage"
	cp -R "$src" "$stage/sharedflowbundle"
	if [ -f "$stage/sharedflowbundle/policies/PM-PublishCallRecord.xml" ]; then
		sed -i -e "s|@GCP_PROJECT@|$GCP_PROJECT|g" -e "s|@PUBSUB_TOPIC@|$PUBSUB_TOPIC|g" \
			"$stage/sharedflowbundle/policies/PM-PublishCallRecord.xml"
	fi
	if grep -rEn '@[A-Z_]+@' "$stage/sharedflowbundle" >&2; then
		die "unreplaced placeholders in the bundle"
	fi
	rm -f "$out"
	(cd "$stage" && zip -qrX "$out" sharedflowbundle)
}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

if [ -n "$build_only" ]; then
	build_only=$(abs "$build_only")
	build_bundle "$here/sharedflowbundle" "$build_only"
	echo "$build_only"
	if [ -n "$build_target" ]; then
		build_target=$(abs "$build_target")
		build_bundle "$here/target/sharedflowbundle" "$build_target"
		echo "$build_target"
	fi
	exit 0
fi

: "${APIGEE_ORG:?set APIGEE_ORG}"
: "${APIGEE_ENV:?set APIGEE_ENV}"
: "${APIGEE_SA:?set APIGEE_SA to the service account the shared flow publishes as}"
api=${APIGEE_API:-https://apigee.googleapis.com/v1}
command -v curl >/dev/null || die "curl is required"
# The token goes to curl through a 0600 header file, never on a command line
# where the process list would show it.
hdr="$work/auth-header"
(umask 077 && printf 'Authorization: Bearer %s\n' "${APIGEE_TOKEN:-$(gcloud auth print-access-token)}" >"$hdr")

call() { # call METHOD URL [curl args...]: prints the response body, fails on HTTP errors
	local method=$1 url=$2
	shift 2
	curl -sS --fail-with-body -X "$method" -H "@$hdr" "$@" "$url"
}
sa_q=$(printf '%s' "$APIGEE_SA" | sed 's/@/%40/g')
env_url=$api/organizations/$APIGEE_ORG/environments/$APIGEE_ENV

# deploy_flow NAME SRC HOOK HOOK_FILE: import, deploy, attach one shared flow.
deploy_flow() {
	local flow=$1 src=$2 hook=$3 hook_file=$4 zipfile="$work/$1.zip" resp rev state=""
	build_bundle "$src" "$zipfile"

	# 1. Import: organizations.sharedflows.create (action=import) takes the
	#    zip as multipart form field "file" and creates a new revision.
	resp=$(call POST "$api/organizations/$APIGEE_ORG/sharedflows?action=import&name=$flow" -F "file=@$zipfile")
	rev=$(printf '%s' "$resp" | sed -n 's/.*"revision"[[:space:]]*:[[:space:]]*"\([0-9][0-9]*\)".*/\1/p' | head -n1)
	[ -n "$rev" ] || die "import of $flow did not return a revision: $resp"
	echo "imported $flow revision $rev"

	# 2. Deploy: organizations.environments.sharedflows.revisions.deployments.deploy;
	#    serviceAccount is the identity PublishMessage uses for Pub/Sub,
	#    override=true replaces the previously deployed revision. The method
	#    takes no body, but an explicit empty one makes curl send
	#    Content-Length: 0: without it Google's front end answers 411.
	call POST "$env_url/sharedflows/$flow/revisions/$rev/deployments?override=true&serviceAccount=$sa_q" \
		--data-binary '' >/dev/null
	echo "deploying $flow revision $rev to $APIGEE_ENV as $APIGEE_SA"

	# Wait for the deployment before attaching: a flow hook can only point
	# at a shared flow deployed in the environment.
	for _ in $(seq 1 60); do
		state=$(call GET "$env_url/sharedflows/$flow/revisions/$rev/deployments" |
			sed -n 's/.*"state"[[:space:]]*:[[:space:]]*"\([A-Z_]*\)".*/\1/p' | head -n1)
		[ "$state" = READY ] && break
		[ "$state" = ERROR ] && die "deployment of $flow revision $rev failed"
		sleep 5
	done
	[ "$state" = READY ] || die "deployment of $flow revision $rev not ready after 5 minutes (state ${state:-unknown})"

	# 3. Attach: organizations.environments.flowhooks.attachSharedFlowToFlowHook.
	call PUT "$env_url/flowhooks/$hook" -H "Content-Type: application/json" --data-binary "@$hook_file" >/dev/null
	echo "attached $flow to $hook in $APIGEE_ENV"
}

# The target flow first: once the publishing flow is attached, every record
# reads what the target flow keeps.
deploy_flow "$target_name" "$here/target/sharedflowbundle" PostTargetFlowHook "$here/flowhook-target.json"
deploy_flow "$name" "$here/sharedflowbundle" PostProxyFlowHook "$here/flowhook.json"
