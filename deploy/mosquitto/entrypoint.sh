#!/bin/sh
# Entry point of the CareWatch broker (docker-compose service `broker`, eclipse-mosquitto:2).
#
# At every container start it builds Mosquitto's password file from environment variables with
# `mosquitto_passwd -b`, so no password, nor its hash, is ever in the repository or the image,
# copies the ACL next to it (owned by the broker's user and private, as Mosquitto 2 expects),
# drops the passwords from its environment and execs the broker (the arguments, or the image's
# usual command).
#
# Logins, each with its password from the environment (required, never printed):
#   healthcheck         MQTT_HEALTHCHECK_PASSWORD   read-only on $SYS, for the healthcheck
#   ingest              MQTT_INGEST_PASSWORD        the ingest service
#   $MQTT_GATEWAY_ID    MQTT_GATEWAY_PASSWORD       a home gateway (optional; user = gateway id)
#   $MQTT_USER_<n>      MQTT_PASSWORD_<n>           more gateways, n = 1, 2, ... up to the first unset
#
# Paths (the defaults are the container's; tests point them at a temporary directory):
#   MOSQUITTO_AUTH_DIR    where passwd and acl are written (a tmpfs in docker-compose.yml)
#   MOSQUITTO_ACL_SOURCE  the ACL to install (deploy/mosquitto/acl, mounted read-only)
#   MOSQUITTO_DATA_DIR    the persistence directory, handed to the broker's user when it exists
set -eu

auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
acl_source="${MOSQUITTO_ACL_SOURCE:-/mosquitto/config/acl}"
data_dir="${MOSQUITTO_DATA_DIR:-/mosquitto/data}"
broker_user="mosquitto"

fail() {
    echo "broker entrypoint: $*" >&2
    exit 64
}

# The user names added so far, space-separated with a space at both ends.
users=" "
# The variables holding passwords, dropped before the broker starts.
secret_vars=""

# add_login NAME VARIABLE: add NAME with the password held in the environment variable VARIABLE.
add_login() {
    name=$1
    var=$2
    # Same alphabet as carewatch_contract.topics.GATEWAY_ID_PATTERN: a user name is also a
    # topic level through %u in the ACL, so '+', '#', '/' and the like can never be in one.
    case "$name" in
        "" | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*)
            fail "user name '$name' is not a valid gateway id (letters, digits, '_', '.', '-')"
            ;;
    esac
    if [ "${#name}" -gt 64 ]; then
        fail "user name '$name' is longer than 64 characters"
    fi
    case "$users" in
        *" $name "*) fail "user name '$name' is given twice (ingest and healthcheck are reserved)" ;;
    esac
    # $var is a variable name chosen by this script, never input, so eval only reads it.
    eval "password=\${$var:-}"
    if [ -z "$password" ]; then
        fail "$var is unset or empty: set it in .env (see deploy/env.example)"
    fi
    mosquitto_passwd -b "$passwd_new" "$name" "$password" >/dev/null \
        || fail "mosquitto_passwd could not add user '$name'"
    users="$users$name "
    secret_vars="$secret_vars $var"
}

umask 077
mkdir -p "$auth_dir"
[ -r "$acl_source" ] || fail "ACL file $acl_source is missing or unreadable"

passwd_file="$auth_dir/passwd"
passwd_new="$auth_dir/passwd.new"
rm -f "$passwd_new"
# On a refusal, leave no half-built file behind (exec, on success, runs no trap).
trap 'rm -f "$passwd_new"' EXIT
: >"$passwd_new"

add_login healthcheck MQTT_HEALTHCHECK_PASSWORD
add_login ingest MQTT_INGEST_PASSWORD
if [ -n "${MQTT_GATEWAY_ID:-}" ]; then
    add_login "$MQTT_GATEWAY_ID" MQTT_GATEWAY_PASSWORD
fi
n=1
while :; do
    eval "extra_user=\${MQTT_USER_$n:-}"
    [ -n "$extra_user" ] || break
    add_login "$extra_user" "MQTT_PASSWORD_$n"
    n=$((n + 1))
done

mv -f "$passwd_new" "$passwd_file"
cp "$acl_source" "$auth_dir/acl"
chmod 0700 "$auth_dir"
chmod 0600 "$passwd_file" "$auth_dir/acl"

# Started as root, Mosquitto drops to its own user before it reads these files.
if [ "$(id -u)" = "0" ] && id "$broker_user" >/dev/null 2>&1; then
    chown -R "$broker_user:$broker_user" "$auth_dir"
    if [ -d "$data_dir" ]; then
        chown -R "$broker_user:$broker_user" "$data_dir"
    fi
fi

for var in $secret_vars; do
    unset "$var"
done
unset password

echo "broker entrypoint: password file written for:$users" >&2

if [ "$#" -eq 0 ]; then
    set -- /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
fi
exec "$@"
