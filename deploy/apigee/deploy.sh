#!/usr/bin/env bash
# Builds the apigee-timescale-publish shared flow bundle, imports it into an
# Apigee organization, deploys it to one environment with a service account
# that may publish to the topic, and attaches it to the PostProxyFlowHook.
# See README.md for what each Apigee API call does.
#
#   deploy.sh                     build, import, deploy, attach
#   deploy.sh --build-only OUT    only write the bundle zip to OUT
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

die() { echo "deploy.sh: $*" >&2; exit 1; }

build_only=""
case "${1:-}" in
--build-only)
	[ -n "${2:-}" ] || die "--build-only needs an output file"
	build_only=$2
	;;
"") ;;
*) die "usage: deploy.sh [--build-only OUT.zip]" ;;
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

# build_bundle OUT: copies the bundle, fills in the topic placeholders and
# zips it with sharedflowbundle/ at the root, as the import API expects.
build_bundle() {
	local out=$1 stage="$work/stage"
	rm -rf "$stage"
	mkdir -p "$stage"
	cp -R "$here/sharedflowbundle" "$stage/"
	sed -i -e "s|@GCP_PROJECT@|$GCP_PROJECT|g" -e "s|@PUBSUB_TOPIC@|$PUBSUB_TOPIC|g" \
		"$stage/sharedflowbundle/policies/PM-PublishCallRecord.xml"
	if grep -rEn '@[A-Z_]+@' "$stage/sharedflowbundle" >&2; then
		die "unreplaced placeholders in the bundle"
	fi
	rm -f "$out"
	(cd "$stage" && zip -qrX "$out" sharedflowbundle)
}

if [ -n "$build_only" ]; then
	case "$build_only" in /*) ;; *) build_only="$PWD/$build_only" ;; esac
	build_bundle "$build_only"
	echo "$build_only"
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

zipfile="$work/$name.zip"
build_bundle "$zipfile"

call() { # call METHOD URL [curl args...]: prints the response body, fails on HTTP errors
	local method=$1 url=$2
	shift 2
	curl -sS --fail-with-body -X "$method" -H "@$hdr" "$@" "$url"
}

# 1. Import: organizations.sharedflows.create (action=import) takes the zip as
#    multipart form field "file" and creates a new revision.
resp=$(call POST "$api/organizations/$APIGEE_ORG/sharedflows?action=import&name=$name" -F "file=@$zipfile")
rev=$(printf '%s' "$resp" | sed -n 's/.*"revision"[[:space:]]*:[[:space:]]*"\([0-9][0-9]*\)".*/\1/p' | head -n1)
[ -n "$rev" ] || die "import did not return a revision: $resp"
echo "imported $name revision $rev"

# 2. Deploy: organizations.environments.sharedflows.revisions.deployments.deploy;
#    serviceAccount is the identity PublishMessage uses for Pub/Sub,
#    override=true replaces the previously deployed revision.
sa_q=$(printf '%s' "$APIGEE_SA" | sed 's/@/%40/g')
call POST "$api/organizations/$APIGEE_ORG/environments/$APIGEE_ENV/sharedflows/$name/revisions/$rev/deployments?override=true&serviceAccount=$sa_q" >/dev/null
echo "deploying revision $rev to $APIGEE_ENV as $APIGEE_SA"

# Wait for the deployment before attaching: a flow hook can only point at a
# shared flow deployed in the environment.
for _ in $(seq 1 60); do
	state=$(call GET "$api/organizations/$APIGEE_ORG/environments/$APIGEE_ENV/sharedflows/$name/revisions/$rev/deployments" |
		sed -n 's/.*"state"[[:space:]]*:[[:space:]]*"\([A-Z_]*\)".*/\1/p' | head -n1)
	[ "$state" = READY ] && break
	[ "$state" = ERROR ] && die "deployment of revision $rev failed"
	sleep 5
done
[ "${state:-}" = READY ] || die "deployment of revision $rev not ready after 5 minutes (state ${state:-unknown})"

# 3. Attach: organizations.environments.flowhooks.attachSharedFlowToFlowHook.
call PUT "$api/organizations/$APIGEE_ORG/environments/$APIGEE_ENV/flowhooks/PostProxyFlowHook" \
	-H "Content-Type: application/json" --data-binary "@$here/flowhook.json" >/dev/null
echo "attached $name to PostProxyFlowHook in $APIGEE_ENV"
