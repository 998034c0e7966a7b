#!/usr/bin/env bash
# Deploys apigee-timescale into one Google Cloud project: service accounts
# with least-privilege IAM, Pub/Sub topic + dead-letter topic + push
# subscription, credential secrets, schema migrations, the functions,
# Cloud Scheduler jobs, log-based metrics and alert policies, and the Apigee
# shared flow. Idempotent: every resource is described first and created or
# updated only when it is missing or its spec changed, so a second run
# changes nothing. See README.md.
#
#   deploy.sh [--config FILE] [--dry-run] [--renew-logins] [--skip-apigee]
#
#   --config FILE    configuration (default deploy/gcp/config.env; documented
#                    in deploy/gcp/config.env.example)
#   --dry-run        change nothing: print every command that would change
#                    something ("+ ..." on stdout) and every read it makes to
#                    decide ("? ..." on stderr)
#   --renew-logins   give the rollup, rotate and readers logins new passwords (new
#                    secret versions) even when their secrets have one
#   --skip-apigee    leave Apigee alone
#
# Needs gcloud (release 492 or later; the beta component, for `gcloud beta
# services identity create`, which has no GA form), go, curl, zip, unzip and
# sha256sum. DB_OWNER_URL, when set in the environment, is the
# migrating role's URL (else DB_OWNER_URL_SECRET is read). DEPLOY_BIN_DIR, when
# set, holds prebuilt `migrate` and `dblogin` binaries instead of go build.
# DEPLOY_RETRY_INTERVAL (seconds, default 30) is the pause between retries
# while Cloud Monitoring does not know a new log-based metric yet.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
app_label=apigee-timescale

# usage prints the comment block at the top of this file.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "deploy.sh: $*" >&2; exit 1; }
note() { echo "== $*"; }
warn() { echo "deploy.sh: warning: $*" >&2; }

config=$here/config.env
dry_run=false
renew_logins=false
skip_apigee=false
while [ $# -gt 0 ]; do
	case "$1" in
	--config) [ $# -ge 2 ] || die "--config needs a file"; config=$2; shift 2 ;;
	--config=*) config=${1#--config=}; shift ;;
	--dry-run) dry_run=true; shift ;;
	--renew-logins) renew_logins=true; shift ;;
	--skip-apigee) skip_apigee=true; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done

[ -f "$config" ] || die "no configuration at $config: copy deploy/gcp/config.env.example and fill it in"
# shellcheck source=/dev/null # the operator's file, shaped like config.env.example
. "$config"

# ---------------------------------------------------------------------------
# Configuration: defaults and validation (config.env.example documents each).

: "${PROJECT_ID:?set PROJECT_ID in $config}"
: "${REGION:?set REGION in $config}"
: "${DB_HOST:=}" "${DB_NAME:?set DB_NAME in $config}"
: "${DB_OWNER_URL_SECRET:=}" "${DB_PORT:=5432}" "${DB_SSLMODE:=require}"
: "${CLOUDSQL_INSTANCE:=}" "${CLOUDSQL_PRIVATE_IP:=false}" "${VPC_CONNECTOR:=}"
: "${DB_STORAGE:=}" "${DB_MAX_CONNS:=8}" "${PREFIX:=apigee}"
# Connections kept free beside the functions' pools (migrations, psql, a
# dashboard): the sizing check below.
: "${CONN_MARGIN:=10}"
: "${GO_RUNTIME:=go126}" "${BUILD_SERVICE_ACCOUNT:=}" "${INGRESS_SETTINGS:=all}"
: "${INGEST_MEMORY:=1Gi}" "${INGEST_CPU=1}" "${INGEST_CONCURRENCY:=80}"
: "${INGEST_MIN_INSTANCES:=1}" "${INGEST_MAX_INSTANCES:=20}" "${INGEST_TIMEOUT:=60s}"
: "${INGEST_REQUEST_TIMEOUT:=9s}"
# No colon: INGEST_PRIVACY= (empty) turns pseudonymisation off on purpose.
: "${INGEST_PRIVACY=client_ip=truncate,forwarded_client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=hmac}"
: "${INGEST_PRIVACY_IPV4_PREFIX:=24}" "${INGEST_PRIVACY_IPV6_PREFIX:=48}"
: "${ROLLUP_MEMORY:=512Mi}" "${ROLLUP_CPU=1}" "${ROLLUP_CONCURRENCY:=2}"
: "${ROLLUP_MAX_INSTANCES:=2}" "${ROLLUP_TIMEOUT:=120s}"
: "${RAW_RETENTION:=30d}" "${REJECTS_RETENTION:=14d}" "${ROLLUP_1M_RETENTION:=90d}" "${ROLLUP_1H_RETENTION:=400d}"
: "${ANOMALY_TOPIC=${PREFIX}-anomalies}"
: "${ROTATE_MEMORY:=256Mi}" "${ROTATE_CPU:=}" "${ROTATE_TIMEOUT:=120s}" "${ROTATE_TTL:=72h}"
: "${READERS_MEMORY:=256Mi}" "${READERS_TIMEOUT:=180s}" "${READERS_SCHEDULE:=*/10 * * * *}"
# Apigee's predefined read-only role; a custom role with only apigee.apps.list
# (and apigee.apps.get) is narrower, when the operator has made one.
: "${READERS_APIGEE_ROLE:=roles/apigee.readOnlyAdmin}"
: "${ACK_DEADLINE:=30}" "${MAX_DELIVERY_ATTEMPTS:=10}" "${MIN_RETRY_DELAY:=10s}"
: "${MAX_RETRY_DELAY:=600s}" "${MESSAGE_RETENTION:=7d}"
: "${SCHEDULER_LOCATION:=}" "${ROLLUP_SCHEDULE:=* * * * *}" "${ROTATE_SCHEDULE:=17 3 * * *}"
: "${SCHEDULE_TIME_ZONE:=Etc/UTC}"
: "${APIGEE_ORG:=}" "${APIGEE_ENV:=}" "${APIGEE_API:=https://apigee.googleapis.com/v1}"
: "${ALERT_CHANNELS:=}" "${ALERT_REJECT_BATCHES:=0}" "${ALERT_NON_ACK:=10}" "${ALERT_JOB_FAILURES:=0}"
: "${METRIC_WAIT:=900}"
SCHEDULER_LOCATION=${SCHEDULER_LOCATION:-$REGION}
# functions/readers mirrors this organization's reader apps into database
# roles; empty (no APIGEE_ORG either): it is not deployed.
: "${READERS_APIGEE_ORG=$APIGEE_ORG}"
readers=false
[ -n "$READERS_APIGEE_ORG" ] && readers=true
# The sync holds one connection at a time.
READERS_DB_MAX_CONNS=2
readers_conns=0
$readers && readers_conns=$READERS_DB_MAX_CONNS

[[ $PROJECT_ID =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "PROJECT_ID '$PROJECT_ID' is not a project id"
[[ $PREFIX =~ ^[a-z][a-z0-9-]{0,13}[a-z0-9]$ ]] || die "PREFIX '$PREFIX' must be 2-15 lowercase letters, digits or dashes"
case "$INGRESS_SETTINGS" in all | internal-only | internal-and-gclb) ;; *) die "INGRESS_SETTINGS must be all, internal-only or internal-and-gclb" ;; esac
[[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "REGION '$REGION' is not a region such as europe-west1"
[[ $INGEST_CONCURRENCY =~ ^[0-9]+$ && $INGEST_CONCURRENCY -gt 1 ]] ||
	die "INGEST_CONCURRENCY must be > 1: group commit needs concurrent deliveries in one instance"
[[ $ROLLUP_CONCURRENCY =~ ^[0-9]+$ && $ROLLUP_CONCURRENCY -ge 1 ]] || die "ROLLUP_CONCURRENCY must be a whole number >= 1"
# check_cpu NAME CONCURRENCY CPU: Cloud Run refuses concurrency > 1 below
# 1 vCPU, and an empty CPU takes the memory's default, which is below 1
# vCPU up to 1 GiB.
check_cpu() {
	local cpu=$3 whole
	[ "$2" -gt 1 ] || return 0
	case "$cpu" in
	*m) [[ ${cpu%m} =~ ^[0-9]+$ ]] && whole=$((${cpu%m} >= 1000)) ;;
	*) [[ $cpu =~ ^[0-9]+(\.[0-9]+)?$ ]] && whole=$((${cpu%%.*} >= 1)) ;;
	esac
	[ "${whole:-0}" = 1 ] ||
		die "${1}_CPU must be at least 1 (is '${cpu}'): Cloud Run requires 1 vCPU for concurrency > 1 (${1}_CONCURRENCY=$2)"
}
check_cpu INGEST "$INGEST_CONCURRENCY" "$INGEST_CPU"
check_cpu ROLLUP "$ROLLUP_CONCURRENCY" "$ROLLUP_CPU"
[[ ${DEPLOY_RETRY_INTERVAL:=30} =~ ^[1-9][0-9]*$ ]] || die "DEPLOY_RETRY_INTERVAL must be a whole number of seconds"
[[ $METRIC_WAIT =~ ^[0-9]+$ ]] || die "METRIC_WAIT must be a whole number of seconds"
[[ $ACK_DEADLINE =~ ^[0-9]+$ && $ACK_DEADLINE -ge 10 && $ACK_DEADLINE -le 600 ]] || die "ACK_DEADLINE must be 10-600 seconds"
[[ $MAX_DELIVERY_ATTEMPTS =~ ^[0-9]+$ && $MAX_DELIVERY_ATTEMPTS -ge 5 && $MAX_DELIVERY_ATTEMPTS -le 100 ]] ||
	die "MAX_DELIVERY_ATTEMPTS must be 5-100"
[[ $INGEST_REQUEST_TIMEOUT =~ ^([0-9]+)s$ && ${BASH_REMATCH[1]} -lt $ACK_DEADLINE ]] ||
	die "INGEST_REQUEST_TIMEOUT must be whole seconds (e.g. 9s) below ACK_DEADLINE ($ACK_DEADLINE s): a late answer counts as a failure"
[ -n "$DB_HOST" ] || [ -n "$CLOUDSQL_INSTANCE" ] || die "set DB_HOST, or CLOUDSQL_INSTANCE"
if [ -n "$APIGEE_ORG" ] && [ -z "$APIGEE_ENV" ]; then die "APIGEE_ORG is set: set APIGEE_ENV too"; fi
for t in ALERT_REJECT_BATCHES ALERT_NON_ACK ALERT_JOB_FAILURES DB_MAX_CONNS DB_PORT CONN_MARGIN; do
	[[ ${!t} =~ ^[0-9]+$ ]] || die "$t must be a whole number"
done
# A rollup run holds two connections: its locked session and the refresh's reader.
[ "$DB_MAX_CONNS" -ge 2 ] || die "DB_MAX_CONNS must be at least 2 (a rollup run holds two connections)"

sa_email() { echo "$PREFIX-$1@$PROJECT_ID.iam.gserviceaccount.com"; }
SA_INGEST=$(sa_email ingest)
SA_ROLLUP=$(sa_email rollup)
SA_ROTATE=$(sa_email rotate)
SA_READERS=$(sa_email readers)
SA_PUSH=$(sa_email push)
SA_SCHEDULER=$(sa_email scheduler)
SA_PUBLISHER=$(sa_email publisher)
SA_BUILD=${BUILD_SERVICE_ACCOUNT:-$(sa_email build)}
FN_INGEST=$PREFIX-ingest
FN_ROLLUP=$PREFIX-rollup
FN_ROTATE=$PREFIX-rotate
FN_READERS=$PREFIX-readers
TOPIC=$PREFIX-calls
DLQ_TOPIC=$PREFIX-calls-dlq
DLQ_HOLD=$PREFIX-calls-dlq-hold
SUBSCRIPTION=$PREFIX-calls-ingest
SECRET_INGEST=$PREFIX-ingest-db
SECRET_ROLLUP=$PREFIX-rollup-db
SECRET_ROTATE=$PREFIX-rotate-db
SECRET_READERS=$PREFIX-readers-db
SECRET_PRIVACY=$PREFIX-ingest-privacy-key
JOB_ROLLUP=$PREFIX-rollup
JOB_ROTATE=$PREFIX-rotate
JOB_READERS=$PREFIX-readers
# Database logins of the rollup and rotate functions; the ingest logins
# apigee_ingest_a/_b come with the migrations and are rotated by functions/rotate.
LOGIN_ROLLUP=apigee_rollup_login
LOGIN_ROTATE=apigee_rotate_login
LOGIN_READERS=apigee_readers_login
SHARED_FLOW=apigee-timescale-publish
TARGET_FLOW=apigee-timescale-target

for c in gcloud go sha256sum; do command -v "$c" >/dev/null || die "$c is required"; done

work=$(mktemp -d)
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------
# Running commands. Every command that changes something goes through run:
# printed, then executed unless --dry-run. Reads go through query and run
# always (they decide what to change). No secret is ever an argument: secret
# payloads travel in files under $work (mode 700) or in a child's environment.

changes=0
show() {
	local argv=("$@")
	[ "$1" = gc ] && argv=(gcloud --quiet --project="$PROJECT_ID" "${argv[@]:1}")
	printf '+'
	printf ' %q' "${argv[@]}"
	printf '\n'
}
run() {
	show "$@"
	changes=$((changes + 1))
	if ! $dry_run; then "$@"; fi
}
# run_retry: IAM bindings on a service account created seconds ago can fail
# until the account has propagated.
run_retry() {
	show "$@"
	changes=$((changes + 1))
	$dry_run && return 0
	local i
	for i in 1 2 3 4 5; do
		"$@" && return 0
		[ "$i" = 5 ] && return 1
		echo "deploy.sh: retrying in $((i * 5))s" >&2
		sleep $((i * 5))
	done
}
# Reads are shown on the original stderr (fd 3), which callers silencing a
# read's errors with 2>/dev/null do not redirect.
exec 3>&2
query() {
	if $dry_run; then show "$@" | sed 's/^+/?/' >&3; fi
	"$@"
}
gc() { gcloud --quiet --project="$PROJECT_ID" "$@"; }

# run_policy ARGS...: run for an alert policy. Cloud Monitoring learns of a
# log-based metric minutes after it is created and, until then, refuses a
# policy naming it: 404 "Cannot find metric(s) that match type = ... If a
# metric was created recently, it could take up to 10 minutes to become
# available" (hashicorp/terraform-provider-google#11102). That answer is
# retried for up to METRIC_WAIT seconds; any other failure stops the script.
run_policy() {
	show "$@"
	changes=$((changes + 1))
	$dry_run && return 0
	local deadline=$((SECONDS + METRIC_WAIT)) err=$work/policy-error
	until "$@" 2>"$err"; do
		if ! grep -q 'Cannot find metric' "$err" || [ "$SECONDS" -ge "$deadline" ]; then
			cat "$err" >&2
			return 1
		fi
		echo "deploy.sh: Cloud Monitoring does not know a new log-based metric yet; retrying in ${DEPLOY_RETRY_INTERVAL}s" >&2
		sleep "$DEPLOY_RETRY_INTERVAL"
	done
}

# spec_hash ARGS...: a short digest of a resource's desired configuration,
# stored on the resource (a label, or its description where there are no
# labels) and compared on the next run.
spec_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
# tree_hash DIR: digest of every file's path and content under DIR.
tree_hash() {
	(cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
# yaml_kv KEY VALUE: one line of a YAML map, the value single-quoted.
yaml_kv() { local v=${2//\'/\'\'}; printf "%s: '%s'\n" "$1" "$v"; }
# json_str VALUE: VALUE as a JSON string (config values have no control characters).
json_str() { local v=${1//\\/\\\\}; v=${v//\"/\\\"}; printf '"%s"' "$v"; }

# ---------------------------------------------------------------------------
note "project $PROJECT_ID, region $REGION, prefix $PREFIX$($dry_run && echo ' (dry run: nothing is changed)')"

# gcloud functions deploy makes 2nd gen functions without --gen2 from
# release 492 on; an older one would make 1st gen functions.
sdk=$(query gcloud version --format=json | sed -n 's/.*"Google Cloud SDK"[[:space:]]*:[[:space:]]*"\([0-9][0-9]*\)\..*/\1/p')
[[ $sdk =~ ^[0-9]+$ && $sdk -ge 492 ]] || die "gcloud ${sdk:-of unknown version} is too old: release 492 or later is needed"

PROJECT_NUMBER=$(query gc projects describe "$PROJECT_ID" --format='value(projectNumber)')
[[ $PROJECT_NUMBER =~ ^[0-9]+$ ]] || die "could not read the project number of $PROJECT_ID"
PUBSUB_AGENT=service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com
# Cloud Run's deterministic URLs (https://SERVICE-PROJECT_NUMBER.REGION.run.app)
# are known before the first deployment, so ingest's expected OIDC audience
# and the push endpoint are set in one pass; run.app URLs are always accepted
# audiences for Cloud Run's own IAM check.
fn_url() { echo "https://$1-$PROJECT_NUMBER.$REGION.run.app"; }
URL_INGEST=$(fn_url "$FN_INGEST")
URL_ROLLUP=$(fn_url "$FN_ROLLUP")
URL_ROTATE=$(fn_url "$FN_ROTATE")
URL_READERS=$(fn_url "$FN_READERS")

# ---------------------------------------------------------------------------
note "APIs"
apis=(cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
	artifactregistry.googleapis.com pubsub.googleapis.com secretmanager.googleapis.com
	cloudscheduler.googleapis.com logging.googleapis.com monitoring.googleapis.com
	iam.googleapis.com)
[ -n "$CLOUDSQL_INSTANCE" ] && apis+=(sqladmin.googleapis.com)
[ -n "$VPC_CONNECTOR" ] && apis+=(vpcaccess.googleapis.com)
{ { [ -n "$APIGEE_ORG" ] && ! $skip_apigee; } || $readers; } && apis+=(apigee.googleapis.com)
enabled=$(query gc services list --enabled --format='value(config.name)')
missing=()
for a in "${apis[@]}"; do grep -qxF "$a" <<<"$enabled" || missing+=("$a"); done
[ ${#missing[@]} -eq 0 ] || run gc services enable "${missing[@]}"

# ---------------------------------------------------------------------------
# IAM. ensure_binding TYPE RESOURCE MEMBER ROLE adds the binding only when the
# resource's policy lacks it (add-iam-policy-binding always writes a policy).
iam_cmd() { # iam_cmd TYPE RESOURCE: the gcloud words addressing the policy
	case "$1" in
	project) echo "projects $2" ;;
	topic) echo "pubsub topics $2" ;;
	subscription) echo "pubsub subscriptions $2" ;;
	secret) echo "secrets $2" ;;
	sa) echo "iam service-accounts $2" ;;
	*) die "iam_cmd: unknown type $1" ;;
	esac
}
ensure_binding() {
	local type=$1 res=$2 member=$3 role=$4 words members
	read -r -a words <<<"$(iam_cmd "$type" "$res")"
	# A resource that does not exist yet (dry run) has no bindings.
	members=$(query gc "${words[@]:0:${#words[@]}-1}" get-iam-policy "${words[@]: -1}" \
		--flatten='bindings[].members' --filter="bindings.role=$role" \
		--format='value(bindings.members)' 2>/dev/null) || members=""
	if ! grep -qxF "$member" <<<"$members"; then
		local extra=()
		[ "$type" = project ] && extra=(--condition=None)
		run_retry gc "${words[@]:0:${#words[@]}-1}" add-iam-policy-binding "${words[@]: -1}" \
			--member="$member" --role="$role" "${extra[@]}"
	fi
}
# Cloud Run services take --region after the name, hence their own helper.
ensure_run_invoker() { # ensure_run_invoker SERVICE SA_EMAIL
	local members
	members=$(query gc run services get-iam-policy "$1" --region="$REGION" \
		--flatten='bindings[].members' --filter="bindings.role=roles/run.invoker" \
		--format='value(bindings.members)' 2>/dev/null) || members=""
	grep -qxF "serviceAccount:$2" <<<"$members" ||
		run_retry gc run services add-iam-policy-binding "$1" --region="$REGION" \
			--member="serviceAccount:$2" --role=roles/run.invoker
}

note "service accounts"
ensure_sa() { # ensure_sa ID DESCRIPTION
	local email
	email=$(sa_email "$1")
	if ! query gc iam service-accounts describe "$email" --format='value(email)' >/dev/null 2>&1; then
		run gc iam service-accounts create "$PREFIX-$1" --display-name="$app_label $1" --description="$2"
	fi
}
ensure_sa ingest "Runs $FN_INGEST: reads $SECRET_INGEST and $SECRET_PRIVACY"
ensure_sa rollup "Runs $FN_ROLLUP: reads $SECRET_ROLLUP"
ensure_sa rotate "Runs $FN_ROTATE: rotates $SECRET_INGEST"
ensure_sa push "Identity of the push subscription $SUBSCRIPTION: invokes $FN_INGEST"
ensure_sa scheduler "Identity of the scheduler jobs: invokes $FN_ROLLUP and $FN_ROTATE"
if $readers; then
	ensure_sa readers "Runs $FN_READERS: lists the Apigee apps of $READERS_APIGEE_ORG, manages the synced reader roles"
	# Listing apps needs apigee.apps.list, in the read-only admin role
	# (https://cloud.google.com/iam/docs/roles-permissions/apigee); the
	# role binds on the project that holds the organization.
	ensure_binding project "$PROJECT_ID" "serviceAccount:$SA_READERS" "$READERS_APIGEE_ROLE"
fi
[ -n "$APIGEE_ORG" ] && ensure_sa publisher "Identity of the Apigee shared flow: publishes to $TOPIC"
if [ -z "$BUILD_SERVICE_ACCOUNT" ]; then
	ensure_sa build "Builds the $app_label functions"
	# The roles Cloud Run's "build service account" page lists for a
	# function build: logs, the image in Artifact Registry, and Storage
	# Object Admin for the uploaded source and the build's images
	# (https://cloud.google.com/run/docs/configuring/services/build-service-account).
	for role in roles/logging.logWriter roles/artifactregistry.writer roles/storage.objectAdmin; do
		ensure_binding project "$PROJECT_ID" "serviceAccount:$SA_BUILD" "$role"
	done
fi
if [ -n "$CLOUDSQL_INSTANCE" ]; then
	# cloudsql.client can only be granted on the project (or with conditions).
	sas=("$SA_INGEST" "$SA_ROLLUP" "$SA_ROTATE")
	$readers && sas+=("$SA_READERS")
	for sa in "${sas[@]}"; do
		ensure_binding project "$PROJECT_ID" "serviceAccount:$sa" roles/cloudsql.client
	done
fi

# ---------------------------------------------------------------------------
note "Pub/Sub topics"
# ensure_pubsub KIND NAME CREATE_ARGS... [-- UPDATE_ARGS...]: KIND is
# "pubsub topics" or "pubsub subscriptions"; creates the resource with
# CREATE_ARGS, or updates it with UPDATE_ARGS when its spec label differs.
ensure_pubsub() {
	local kind=$1 name=$2 spec create=() update=() current
	shift 2
	while [ $# -gt 0 ] && [ "$1" != -- ]; do create+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	update=("$@")
	spec=$(spec_hash "$kind" "$name" "${create[@]}")
	local -a k
	read -r -a k <<<"$kind"
	if current=$(query gc "${k[@]}" describe "$name" --format='value(labels.deploy_spec)' 2>/dev/null); then
		if [ "$current" != "$spec" ]; then
			run gc "${k[@]}" update "$name" "${update[@]}" --update-labels="app=$app_label,deploy_spec=$spec"
		fi
	else
		run gc "${k[@]}" create "$name" "${create[@]}" --labels="app=$app_label,deploy_spec=$spec"
	fi
}
ensure_pubsub "pubsub topics" "$TOPIC"
ensure_pubsub "pubsub topics" "$DLQ_TOPIC"
# Messages published to a topic without subscriptions are dropped: this
# subscription keeps dead letters for inspection and replay.
ensure_pubsub "pubsub subscriptions" "$DLQ_HOLD" --topic="$DLQ_TOPIC" \
	--message-retention-duration="$MESSAGE_RETENTION" --expiration-period=never --ack-deadline=60 \
	-- --message-retention-duration="$MESSAGE_RETENTION" --expiration-period=never --ack-deadline=60
[ -n "$ANOMALY_TOPIC" ] && ensure_pubsub "pubsub topics" "$ANOMALY_TOPIC"
[ -n "$APIGEE_ORG" ] && ensure_binding topic "$TOPIC" "serviceAccount:$SA_PUBLISHER" roles/pubsub.publisher
[ -n "$ANOMALY_TOPIC" ] && ensure_binding topic "$ANOMALY_TOPIC" "serviceAccount:$SA_ROLLUP" roles/pubsub.publisher

# ---------------------------------------------------------------------------
note "secrets"
ensure_secret() { # ensure_secret NAME
	if ! query gc secrets describe "$1" --format='value(name)' >/dev/null 2>&1; then
		run gc secrets create "$1" --replication-policy=automatic --labels="app=$app_label"
	fi
}
for s in "$SECRET_INGEST" "$SECRET_ROLLUP" "$SECRET_ROTATE" "$SECRET_PRIVACY"; do ensure_secret "$s"; done
if $readers; then
	ensure_secret "$SECRET_READERS"
	ensure_binding secret "$SECRET_READERS" "serviceAccount:$SA_READERS" roles/secretmanager.secretAccessor
fi
# Each function reads only its own secret; rotate also reads and versions the
# ingest secret (secretVersionManager: add, and disable old versions; it has
# no access to payloads, hence secretAccessor too).
ensure_binding secret "$SECRET_INGEST" "serviceAccount:$SA_INGEST" roles/secretmanager.secretAccessor
ensure_binding secret "$SECRET_ROLLUP" "serviceAccount:$SA_ROLLUP" roles/secretmanager.secretAccessor
ensure_binding secret "$SECRET_ROTATE" "serviceAccount:$SA_ROTATE" roles/secretmanager.secretAccessor
ensure_binding secret "$SECRET_INGEST" "serviceAccount:$SA_ROTATE" roles/secretmanager.secretAccessor
ensure_binding secret "$SECRET_INGEST" "serviceAccount:$SA_ROTATE" roles/secretmanager.secretVersionManager
# ingest reads the pseudonym key once at start; operators who run the
# pseudonym command need their own accessor grant.
ensure_binding secret "$SECRET_PRIVACY" "serviceAccount:$SA_INGEST" roles/secretmanager.secretAccessor

# ---------------------------------------------------------------------------
note "database: migrations and logins"
tool() { # tool NAME: path of the migrate or dblogin binary
	if [ -n "${DEPLOY_BIN_DIR:-}" ]; then
		echo "$DEPLOY_BIN_DIR/$1"
	else
		echo "$work/bin/$1"
	fi
}
build_tools() {
	[ -n "${DEPLOY_BIN_DIR:-}" ] && return 0
	(cd "$root" && go build -o "$work/bin/migrate" ./migrations/cmd/migrate &&
		go build -o "$work/bin/dblogin" ./deploy/gcp/cmd/dblogin)
}
has_version() { # has_version SECRET: whether the secret has an enabled version
	[ -n "$(query gc secrets versions list "$1" --filter=state=ENABLED --limit=1 --format='value(name)' 2>/dev/null)" ]
}
owner_url=""
load_owner_url() {
	[ -n "$owner_url" ] && return 0
	if [ -n "${DB_OWNER_URL:-}" ]; then
		owner_url=$DB_OWNER_URL
	else
		[ -n "$DB_OWNER_URL_SECRET" ] || die "set DB_OWNER_URL_SECRET in $config, or DB_OWNER_URL in the environment"
		# Captured, never printed; "latest" is the newest version created.
		owner_url=$(gc secrets versions access latest --secret="$DB_OWNER_URL_SECRET") ||
			die "could not read secret $DB_OWNER_URL_SECRET"
	fi
	[ -n "$owner_url" ] || die "the owner database URL is empty"
}
# with_owner CMD...: runs CMD with DATABASE_URL set to the owner URL in its
# environment only.
with_owner() {
	local from="secret $DB_OWNER_URL_SECRET"
	[ -n "${DB_OWNER_URL:-}" ] && from="environment variable DB_OWNER_URL"
	printf '+ DATABASE_URL=<owner url from %s>' "$from"
	printf ' %q' "$@"
	printf '\n'
	if ! $dry_run; then
		load_owner_url
		DATABASE_URL=$owner_url APIGEE_STORAGE=$DB_STORAGE "$@"
	fi
}
# bootstrap_login SECRET LOGIN GROUP [VALID_FOR]: gives LOGIN (created if
# needed, member of GROUP) a fresh password and stores it as the secret's
# first version, unless the secret has one already (or --renew-logins for
# the static logins).
bootstrap_login() {
	local secret=$1 login=$2 group=$3 valid=${4:-} file
	if has_version "$secret" && ! { $renew_logins && [ -z "$valid" ]; }; then
		return 0
	fi
	file=$work/$secret.json
	local args=(-login "$login" -group "$group" -host "$DB_HOST" -port "$DB_PORT"
		-database "$DB_NAME" -sslmode "$DB_SSLMODE" -out "$file")
	[ -n "$valid" ] && args+=(-valid-for "$valid")
	with_owner "$(tool dblogin)" "${args[@]}"
	run gc secrets versions add "$secret" --data-file="$file"
	rm -f "$file"
}
$dry_run || build_tools
# The schema first (goose: applies only what is pending), as the owner,
# never at function start-up.
migrated=$(with_owner "$(tool migrate)" up)
printf '%s\n' "$migrated"
# Every instance of every function may hold DB_MAX_CONNS connections at peak
# (rotate runs one instance); they must fit in what the server lets ordinary
# roles open, with a margin for migrations, psql and the rollup's readers.
need=$(((INGEST_MAX_INSTANCES + ROLLUP_MAX_INSTANCES + 1) * DB_MAX_CONNS + readers_conns))
readers_note=""
$readers && readers_note=" + readers $readers_conns"
available=$(sed -n 's/^connections available: \([0-9]*\)$/\1/p' <<<"$migrated")
if $dry_run; then
	note "connections: up to $need at peak ((INGEST_MAX_INSTANCES $INGEST_MAX_INSTANCES + ROLLUP_MAX_INSTANCES $ROLLUP_MAX_INSTANCES + rotate 1) × DB_MAX_CONNS $DB_MAX_CONNS$readers_note); checked against the server on a real run"
elif [ -z "$available" ]; then
	warn "could not read the server's connection limit; make sure it allows $need connections ((ingest + rollup + rotate instances) × DB_MAX_CONNS)"
elif [ "$need" -gt $((available - CONN_MARGIN)) ]; then
	die "the functions may open $need connections ((INGEST_MAX_INSTANCES $INGEST_MAX_INSTANCES + ROLLUP_MAX_INSTANCES $ROLLUP_MAX_INSTANCES + rotate 1) × DB_MAX_CONNS $DB_MAX_CONNS$readers_note), but the server allows ordinary roles $available (max_connections less reserved), less a margin of $CONN_MARGIN: lower INGEST_MAX_INSTANCES or DB_MAX_CONNS, or raise max_connections"
fi
# The ingest secret is rotated by functions/rotate from then on; its first
# credential expires like the ones rotate creates.
bootstrap_login "$SECRET_INGEST" apigee_ingest_a apigee_ingest "$ROTATE_TTL"
bootstrap_login "$SECRET_ROLLUP" "$LOGIN_ROLLUP" apigee_rollup
bootstrap_login "$SECRET_ROTATE" "$LOGIN_ROTATE" apigee_rotate
$readers && bootstrap_login "$SECRET_READERS" "$LOGIN_READERS" apigee_reader_sync
# The pseudonym key: 48 random bytes, once. A new version changes every
# pseudonym from the next ingest revision on: that is erasure (README,
# "Privacy"), not routine rotation, so a run never adds one by itself. The
# key is never an argument of a command.
if ! has_version "$SECRET_PRIVACY"; then
	file=$work/privacy-key
	$dry_run || (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$file")
	run gc secrets versions add "$SECRET_PRIVACY" --data-file="$file"
	rm -f "$file"
fi

# ---------------------------------------------------------------------------
note "functions"
secret_ref() { echo "projects/$PROJECT_ID/secrets/$1"; }
db_env() { # the shared/dbconn variables of a function reading secret $1
	yaml_kv DB_SECRET "$(secret_ref "$1")"
	yaml_kv DB_MAX_CONNS "$DB_MAX_CONNS"
	if [ -n "$CLOUDSQL_INSTANCE" ]; then
		yaml_kv CLOUDSQL_INSTANCE "$CLOUDSQL_INSTANCE"
		yaml_kv CLOUDSQL_PRIVATE_IP "$CLOUDSQL_PRIVATE_IP"
	fi
}
{
	db_env "$SECRET_INGEST"
	yaml_kv PUSH_AUDIENCE "$URL_INGEST"
	yaml_kv PUSH_SERVICE_ACCOUNT "$SA_PUSH"
	yaml_kv INGEST_REQUEST_TIMEOUT "$INGEST_REQUEST_TIMEOUT"
	yaml_kv INGEST_PRIVACY "$INGEST_PRIVACY"
	yaml_kv INGEST_PRIVACY_IPV4_PREFIX "$INGEST_PRIVACY_IPV4_PREFIX"
	yaml_kv INGEST_PRIVACY_IPV6_PREFIX "$INGEST_PRIVACY_IPV6_PREFIX"
	yaml_kv INGEST_PRIVACY_KEY_SECRET "$(secret_ref "$SECRET_PRIVACY")"
} >"$work/env-ingest.yaml"
{
	db_env "$SECRET_ROLLUP"
	yaml_kv RAW_RETENTION "$RAW_RETENTION"
	yaml_kv REJECTS_RETENTION "$REJECTS_RETENTION"
	yaml_kv ROLLUP_1M_RETENTION "$ROLLUP_1M_RETENTION"
	yaml_kv ROLLUP_1H_RETENTION "$ROLLUP_1H_RETENTION"
	if [ -n "$ANOMALY_TOPIC" ]; then
		yaml_kv ALERT_TOPIC "projects/$PROJECT_ID/topics/$ANOMALY_TOPIC"
	fi
} >"$work/env-rollup.yaml"
{
	db_env "$SECRET_ROTATE"
	yaml_kv ROTATE_SECRET "$(secret_ref "$SECRET_INGEST")"
	yaml_kv ROTATE_TTL "$ROTATE_TTL"
	yaml_kv ROTATE_DB_HOST "$DB_HOST"
	yaml_kv ROTATE_DB_PORT "$DB_PORT"
	yaml_kv ROTATE_DB_NAME "$DB_NAME"
	yaml_kv ROTATE_DB_SSLMODE "$DB_SSLMODE"
	yaml_kv ROTATE_AUDIENCE "$URL_ROTATE"
	yaml_kv ROTATE_SERVICE_ACCOUNT "$SA_SCHEDULER"
} >"$work/env-rotate.yaml"
if $readers; then
	{
		DB_MAX_CONNS=$READERS_DB_MAX_CONNS db_env "$SECRET_READERS"
		yaml_kv READERS_APIGEE_ORG "$READERS_APIGEE_ORG"
		yaml_kv READERS_AUDIENCE "$URL_READERS"
		yaml_kv READERS_SERVICE_ACCOUNT "$SA_SCHEDULER"
	} >"$work/env-readers.yaml"
fi

# deploy_function NAME PACKAGE TARGET ENVFILE FLAGS...: stages PACKAGE
# (stage.sh), and deploys it when the function is missing or its spec label
# differs from the digest of the flags, the environment and the source.
deploy_function() {
	local name=$1 pkg=$2 target=$3 envfile=$4 src=$work/src-$1 current spec
	shift 4
	"$here/stage.sh" "$pkg" "$src" >/dev/null
	local flags=(--region="$REGION" --runtime="$GO_RUNTIME" --entry-point="$target"
		--trigger-http --no-allow-unauthenticated --ingress-settings="$INGRESS_SETTINGS"
		--build-service-account="projects/$PROJECT_ID/serviceAccounts/$SA_BUILD"
		--env-vars-file="$envfile" "$@")
	if [ -n "$VPC_CONNECTOR" ]; then
		flags+=(--vpc-connector="$VPC_CONNECTOR" --egress-settings=private-ranges-only)
	fi
	spec=$(spec_hash "${flags[@]/#--env-vars-file=*/}" "$(cat "$envfile")" "$(tree_hash "$src")")
	current=$(query gc functions describe "$name" --region="$REGION" \
		--format='value(labels.deploy_spec)' 2>/dev/null) || current=""
	if [ "$current" != "$spec" ]; then
		run gc functions deploy "$name" --source="$src" "${flags[@]}" \
			--update-labels="app=$app_label,deploy_spec=$spec"
	fi
}
cpu_flag() { [ -n "$1" ] && echo "--cpu=$1"; true; }
# ingest: concurrency > 1 (≥ 1 vCPU) so concurrent deliveries share commits.
deploy_function "$FN_INGEST" ./functions/ingest Ingest "$work/env-ingest.yaml" \
	--service-account="$SA_INGEST" --memory="$INGEST_MEMORY" --cpu="$INGEST_CPU" \
	--concurrency="$INGEST_CONCURRENCY" --min-instances="$INGEST_MIN_INSTANCES" \
	--max-instances="$INGEST_MAX_INSTANCES" --timeout="$INGEST_TIMEOUT"
# shellcheck disable=SC2046 # cpu_flag prints one word or nothing
deploy_function "$FN_ROLLUP" ./functions/rollup Rollup "$work/env-rollup.yaml" \
	--service-account="$SA_ROLLUP" --memory="$ROLLUP_MEMORY" $(cpu_flag "$ROLLUP_CPU") \
	--concurrency="$ROLLUP_CONCURRENCY" --min-instances=0 \
	--max-instances="$ROLLUP_MAX_INSTANCES" --timeout="$ROLLUP_TIMEOUT"
# shellcheck disable=SC2046
deploy_function "$FN_ROTATE" ./functions/rotate Rotate "$work/env-rotate.yaml" \
	--service-account="$SA_ROTATE" --memory="$ROTATE_MEMORY" $(cpu_flag "$ROTATE_CPU") \
	--concurrency=1 --min-instances=0 --max-instances=1 --timeout="$ROTATE_TIMEOUT"
# readers: next to rotate, which also manages database logins; one run at a
# time (the advisory lock would make a second one wait for nothing).
if $readers; then
	deploy_function "$FN_READERS" ./functions/readers SyncReaders "$work/env-readers.yaml" \
		--service-account="$SA_READERS" --memory="$READERS_MEMORY" \
		--concurrency=1 --min-instances=0 --max-instances=1 --timeout="$READERS_TIMEOUT"
fi

# Invokers: only the push identity may call ingest, only the scheduler
# identity rollup and rotate.
ensure_run_invoker "$FN_INGEST" "$SA_PUSH"
ensure_run_invoker "$FN_ROLLUP" "$SA_SCHEDULER"
ensure_run_invoker "$FN_ROTATE" "$SA_SCHEDULER"
$readers && ensure_run_invoker "$FN_READERS" "$SA_SCHEDULER"

# ---------------------------------------------------------------------------
note "push subscription"
# The Pub/Sub service agent signs the push OIDC tokens as the push identity,
# and forwards undeliverable messages: publisher on the dead-letter topic,
# subscriber on the subscription it takes them from. Service agents are
# created lazily (https://cloud.google.com/iam/docs/service-agents): binding
# one that does not exist yet fails, so it is created first. The command
# returns the existing agent when there is one, so it changes nothing then;
# a dry run only shows it.
if $dry_run; then
	show gc beta services identity create --service=pubsub.googleapis.com | sed 's/^+/?/' >&3
else
	agent=$(gc beta services identity create --service=pubsub.googleapis.com --format='value(email)') ||
		die "could not create the Pub/Sub service agent"
	[ "$agent" = "$PUBSUB_AGENT" ] || die "the Pub/Sub service agent is $agent, expected $PUBSUB_AGENT"
fi
ensure_binding sa "$SA_PUSH" "serviceAccount:$PUBSUB_AGENT" roles/iam.serviceAccountTokenCreator
ensure_binding topic "$DLQ_TOPIC" "serviceAccount:$PUBSUB_AGENT" roles/pubsub.publisher
push_flags=(--push-endpoint="$URL_INGEST" --push-auth-service-account="$SA_PUSH"
	--push-auth-token-audience="$URL_INGEST" --ack-deadline="$ACK_DEADLINE"
	--dead-letter-topic="projects/$PROJECT_ID/topics/$DLQ_TOPIC"
	--max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
	--min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY"
	--message-retention-duration="$MESSAGE_RETENTION" --expiration-period=never)
ensure_pubsub "pubsub subscriptions" "$SUBSCRIPTION" --topic="$TOPIC" "${push_flags[@]}" -- "${push_flags[@]}"
ensure_binding subscription "$SUBSCRIPTION" "serviceAccount:$PUBSUB_AGENT" roles/pubsub.subscriber

# ---------------------------------------------------------------------------
note "scheduler jobs"
# ensure_job NAME SCHEDULE URL ATTEMPT_DEADLINE: an HTTP job with an OIDC
# token for the scheduler identity. Jobs have no labels: the spec digest is
# kept at the end of the description.
ensure_job() {
	local name=$1 flags spec current
	flags=(--location="$SCHEDULER_LOCATION" --schedule="$2" --time-zone="$SCHEDULE_TIME_ZONE"
		--uri="$3" --http-method=POST --oidc-service-account-email="$SA_SCHEDULER"
		--oidc-token-audience="$3" --attempt-deadline="$4" --max-retry-attempts=0)
	spec=$(spec_hash "${flags[@]}")
	current=$(query gc scheduler jobs describe "$name" --location="$SCHEDULER_LOCATION" \
		--format='value(description)' 2>/dev/null) || current=""
	if [ -z "$current" ]; then
		run gc scheduler jobs create http "$name" "${flags[@]}" --description="$app_label: calls $3 (spec $spec)"
	elif [[ $current != *"(spec $spec)" ]]; then
		run gc scheduler jobs update http "$name" "${flags[@]}" --description="$app_label: calls $3 (spec $spec)"
	fi
}
ensure_job "$JOB_ROLLUP" "$ROLLUP_SCHEDULE" "$URL_ROLLUP" "${ROLLUP_TIMEOUT}"
ensure_job "$JOB_ROTATE" "$ROTATE_SCHEDULE" "$URL_ROTATE" "${ROTATE_TIMEOUT}"
$readers && ensure_job "$JOB_READERS" "$READERS_SCHEDULE" "$URL_READERS" "${READERS_TIMEOUT}"

# ---------------------------------------------------------------------------
note "log-based metrics and alert policies"
run_log="logName=\"projects/$PROJECT_ID/logs/run.googleapis.com%2Frequests\""
svc() { echo "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$1\""; }
# ensure_metric NAME DESCRIPTION FILTER [LABEL EXTRACTOR]: a counter of the
# matching log entries. The spec digest ends the description.
ensure_metric() {
	local name=$1 desc=$2 filter=$3 file=$work/metric-$1.json spec current labels=""
	if [ $# -ge 5 ]; then
		labels=$(printf ',\n  "labelExtractors": {%s: %s},\n  "metricDescriptor": {"metricKind": "DELTA", "valueType": "INT64", "labels": [{"key": %s, "valueType": "STRING"}]}' \
			"$(json_str "$4")" "$(json_str "$5")" "$(json_str "$4")")
	fi
	spec=$(spec_hash "$desc" "$filter" "$labels")
	printf '{\n  "description": %s,\n  "filter": %s%s\n}\n' \
		"$(json_str "$desc (spec $spec)")" "$(json_str "$filter")" "$labels" >"$file"
	current=$(query gc logging metrics describe "$name" --format='value(description)' 2>/dev/null) || current=""
	if [ -z "$current" ]; then
		run gc logging metrics create "$name" --config-from-file="$file"
	elif [[ $current != *"(spec $spec)" ]]; then
		run gc logging metrics update "$name" --config-from-file="$file"
	fi
}
M_REJECTS=${PREFIX}_ingest_reject_batches
M_NON_ACK=${PREFIX}_ingest_non_ack
M_ROTATE=${PREFIX}_rotate_failures
M_ROLLUP=${PREFIX}_rollup_failures
M_JOBS=${PREFIX}_scheduler_failures
ensure_metric "$M_REJECTS" "Ingest batches that quarantined records in apigee.ingest_rejects" \
	"$(svc "$FN_INGEST") AND jsonPayload.message=\"batch committed\" AND jsonPayload.rejected>0"
# Push counts 102, 200, 201, 202 and 204 as acknowledgements; ingest answers
# 204, and anything else is redelivered.
ensure_metric "$M_NON_ACK" "Push deliveries ingest did not acknowledge (redelivered), by status" \
	"$(svc "$FN_INGEST") AND $run_log AND (httpRequest.status>=300 OR httpRequest.status<200)" \
	status "EXTRACT(httpRequest.status)"
ensure_metric "$M_ROTATE" "Failed credential rotations (rotate errors and 5xx answers)" \
	"$(svc "$FN_ROTATE") AND (severity>=ERROR OR ($run_log AND httpRequest.status>=500))"
ensure_metric "$M_ROLLUP" "Failed rollup runs (rollup errors and 5xx answers)" \
	"$(svc "$FN_ROLLUP") AND (severity>=ERROR OR ($run_log AND httpRequest.status>=500))"
ensure_metric "$M_JOBS" "Failed Cloud Scheduler attempts of the rollup and rotate jobs, by job" \
	"resource.type=\"cloud_scheduler_job\" AND (resource.labels.job_id=\"$JOB_ROLLUP\" OR resource.labels.job_id=\"$JOB_ROTATE\") AND severity>=ERROR" \
	job "EXTRACT(resource.labels.job_id)"

channels_json() {
	local out="" c
	local IFS=,
	for c in $ALERT_CHANNELS; do
		[ -n "$c" ] && out+="${out:+, }$(json_str "$c")"
	done
	printf '[%s]' "$out"
}
# ensure_policy TITLE METRIC RESOURCE_TYPE THRESHOLD DOC: an alert when the
# metric's 5-minute sum exceeds THRESHOLD. Found by display name; the spec
# digest is a user label.
ensure_policy() {
	local title="$PREFIX: $1" metric=$2 rtype=$3 threshold=$4 doc=$5 file spec body existing name current
	file=$work/policy-$metric.json
	body=$(printf '{
  "displayName": %s,
  "userLabels": {"app": "%s", "deploy_spec": "@SPEC@"},
  "combiner": "OR",
  "conditions": [{
    "displayName": %s,
    "conditionThreshold": {
      "filter": %s,
      "aggregations": [{"alignmentPeriod": "300s", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}],
      "comparison": "COMPARISON_GT",
      "thresholdValue": %s,
      "duration": "0s",
      "trigger": {"count": 1}
    }
  }],
  "alertStrategy": {"autoClose": "1800s"},
  "documentation": {"content": %s, "mimeType": "text/markdown"},
  "notificationChannels": %s
}' "$(json_str "$title")" "$app_label" "$(json_str "$1: 5-minute sum > $threshold")" \
		"$(json_str "metric.type=\"logging.googleapis.com/user/$metric\" AND resource.type=\"$rtype\"")" \
		"$threshold" "$(json_str "$doc")" "$(channels_json)")
	spec=$(spec_hash "$body")
	printf '%s\n' "${body/@SPEC@/$spec}" >"$file"
	existing=$(query gc monitoring policies list --filter="displayName=\"$title\"" \
		--format='value(name,userLabels.deploy_spec)' 2>/dev/null) || existing=""
	if [ -z "$existing" ]; then
		run_policy gc monitoring policies create --policy-from-file="$file"
	else
		read -r name current <<<"$(head -n1 <<<"$existing")"
		[ "$current" = "$spec" ] || run_policy gc monitoring policies update "$name" --policy-from-file="$file"
	fi
}
ensure_policy "ingest rejects" "$M_REJECTS" cloud_run_revision "$ALERT_REJECT_BATCHES" \
	"Ingest quarantined records. See the reasons: \`SELECT reason, field, count(*) FROM apigee.ingest_rejects WHERE received_at > now() - interval '1 hour' GROUP BY 1, 2\` or the Grafana *Rejects by reason* panel."
ensure_policy "ingest non-ack answers" "$M_NON_ACK" cloud_run_revision "$ALERT_NON_ACK" \
	"Ingest answered push deliveries with a status Pub/Sub does not count as an acknowledgement (401 authentication, 429 queue full, 503 database); they are redelivered and, after $MAX_DELIVERY_ATTEMPTS attempts, dead-lettered to $DLQ_TOPIC (kept in $DLQ_HOLD). Check $FN_INGEST's logs."
ensure_policy "credential rotation failures" "$M_ROTATE" cloud_run_revision "$ALERT_JOB_FAILURES" \
	"$FN_ROTATE failed. The previous ingest password stays valid until its VALID UNTIL ($ROTATE_TTL after it was set): fix the cause before then. See $FN_ROTATE's logs (rotate: run failed, summary.failed_step)."
ensure_policy "rollup failures" "$M_ROLLUP" cloud_run_revision "$ALERT_JOB_FAILURES" \
	"$FN_ROLLUP failed; dashboards fall behind and retention does not run. See $FN_ROLLUP's logs."
ensure_policy "scheduler failures" "$M_JOBS" cloud_scheduler_job "$ALERT_JOB_FAILURES" \
	"A Cloud Scheduler attempt of $JOB_ROLLUP or $JOB_ROTATE failed (the function answered an error, or could not be reached or authorised)."

# ---------------------------------------------------------------------------
if [ -z "$APIGEE_ORG" ]; then
	note "Apigee: skipped (APIGEE_ORG is empty)"
elif $skip_apigee; then
	note "Apigee: skipped (--skip-apigee)"
else
	note "Apigee shared flow"
	for c in curl zip unzip; do command -v "$c" >/dev/null || die "$c is required for the Apigee step"; done
	# The bundles as deploy/apigee/deploy.sh builds them, digested by
	# content (zip entries carry timestamps).
	GCP_PROJECT=$PROJECT_ID PUBSUB_TOPIC=$TOPIC "$root/deploy/apigee/deploy.sh" --build-only \
		"$work/bundle.zip" "$work/target-bundle.zip" >/dev/null
	mkdir -p "$work/bundle/publish" "$work/bundle/target"
	unzip -q "$work/bundle.zip" -d "$work/bundle/publish"
	unzip -q "$work/target-bundle.zip" -d "$work/bundle/target"
	bundle_hash=$(tree_hash "$work/bundle")
	# The token goes into a header file for curl (-H @file), not into argv.
	hdr=$work/apigee-auth
	(umask 077 && printf 'Authorization: Bearer %s\n' "$(gcloud auth print-access-token)" >"$hdr")
	apigee_get() { # apigee_get PATH: prints the body, empty on 404
		local code
		code=$(query curl -sS -o "$work/apigee-body" -w '%{http_code}' -H @"$hdr" "$APIGEE_API/$1") || code=000
		case "$code" in
		2??) cat "$work/apigee-body" ;;
		404) ;;
		*) die "Apigee API GET $1 answered $code: $(cat "$work/apigee-body" 2>/dev/null)" ;;
		esac
	}
	json_field() { sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n1; }
	env_path=organizations/$APIGEE_ORG/environments/$APIGEE_ENV
	# flow_state FLOW HOOK: "REVISION SERVICE_ACCOUNT_EMAIL ATTACHED_FLOW" of
	# the flow as deployed. The environment's deployments list gives the
	# revision; the service account is read from the revision's
	# getDeployments, the documented place for a Deployment's serviceAccount
	# (organizations.environments.sharedflows.revisions.getDeployments).
	flow_state() {
		local rev sa="" hooked
		rev=$(apigee_get "$env_path/sharedflows/$1/deployments" | json_field revision)
		if [ -n "$rev" ]; then
			sa=$(apigee_get "$env_path/sharedflows/$1/revisions/$rev/deployments" | json_field serviceAccount)
		fi
		hooked=$(apigee_get "$env_path/flowhooks/$2" | json_field sharedFlow)
		echo "${rev:--} ${sa##*/} ${hooked:--}"
	}
	read -r pub_rev pub_sa pub_hook <<<"$(flow_state "$SHARED_FLOW" PostProxyFlowHook)"
	read -r tgt_rev tgt_sa tgt_hook <<<"$(flow_state "$TARGET_FLOW" PostTargetFlowHook)"
	# What this script deployed last is recorded on the topic the flow
	# feeds: the bundles' digest and the revisions they became.
	recorded=$(query gc pubsub topics describe "$TOPIC" \
		--format='value(labels.apigee_bundle,labels.apigee_revision,labels.apigee_target_revision)' 2>/dev/null) || recorded=""
	read -r rec_hash rec_rev rec_tgt <<<"$recorded" || true
	if [ "${rec_hash:-}" = "$bundle_hash" ] && [ "${rec_rev:-}" = "$pub_rev" ] && [ "${rec_tgt:-}" = "$tgt_rev" ] &&
		[ "$pub_sa" = "$SA_PUBLISHER" ] && [ "$tgt_sa" = "$SA_PUBLISHER" ] &&
		[ "$pub_hook" = "$SHARED_FLOW" ] && [ "$tgt_hook" = "$TARGET_FLOW" ]; then
		: # both deployed, as the publisher, and attached
	else
		# Import, deploy as the publisher identity, attach: deploy/apigee/deploy.sh.
		show env GCP_PROJECT="$PROJECT_ID" PUBSUB_TOPIC="$TOPIC" APIGEE_ORG="$APIGEE_ORG" \
			APIGEE_ENV="$APIGEE_ENV" APIGEE_SA="$SA_PUBLISHER" APIGEE_API="$APIGEE_API" \
			"$root/deploy/apigee/deploy.sh"
		changes=$((changes + 1))
		if ! $dry_run; then
			out=$(GCP_PROJECT=$PROJECT_ID PUBSUB_TOPIC=$TOPIC APIGEE_ORG=$APIGEE_ORG APIGEE_ENV=$APIGEE_ENV \
				APIGEE_SA=$SA_PUBLISHER APIGEE_API=$APIGEE_API "$root/deploy/apigee/deploy.sh")
			printf '%s\n' "$out"
			new_rev=$(sed -n "s/^imported $SHARED_FLOW revision \([0-9][0-9]*\)$/\1/p" <<<"$out" | head -n1)
			new_tgt=$(sed -n "s/^imported $TARGET_FLOW revision \([0-9][0-9]*\)$/\1/p" <<<"$out" | head -n1)
			if [ -z "$new_rev" ] || [ -z "$new_tgt" ]; then die "deploy/apigee/deploy.sh did not report both imported revisions"; fi
			run gc pubsub topics update "$TOPIC" \
				--update-labels="apigee_bundle=$bundle_hash,apigee_revision=$new_rev,apigee_target_revision=$new_tgt"
		fi
	fi
fi

# ---------------------------------------------------------------------------
if $dry_run; then
	note "dry run: $changes command(s) would change something"
elif [ "$changes" -eq 0 ]; then
	note "nothing to change: everything is up to date"
else
	note "done: $changes change(s)"
fi
cat <<EOF
   ingest push endpoint  $URL_INGEST  (subscription $SUBSCRIPTION on $TOPIC)
   rollup                $URL_ROLLUP  (job $JOB_ROLLUP: $ROLLUP_SCHEDULE $SCHEDULE_TIME_ZONE)
   rotate                $URL_ROTATE  (job $JOB_ROTATE: $ROTATE_SCHEDULE $SCHEDULE_TIME_ZONE)
   dead letters          $DLQ_TOPIC -> $DLQ_HOLD
EOF
if $readers; then
	echo "   readers               $URL_READERS  (job $JOB_READERS: $READERS_SCHEDULE $SCHEDULE_TIME_ZONE; org $READERS_APIGEE_ORG)"
fi
