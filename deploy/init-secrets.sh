#!/bin/sh
# Makes the secrets docker-compose.yml mounts (once; existing files are kept):
# random passwords, the InfluxDB token, the city feed's HMAC key, and an API token file
# with one admin token (printed once). SECRETS_DIR overrides ./secrets.
# The directory is 0700 (host side); the files are 0644 because compose bind-mounts them
# into containers that run as unprivileged users with other uids.
# Unless QN_SKIP_MOSQUITTO_PASSWD is set, the server's MQTT password is also set in
# ./mosquitto/passwd for user qingnuan-server (with mosquitto_passwd, or through docker).
set -eu
cd "$(dirname "$0")"
dir="${SECRETS_DIR:-./secrets}"
umask 022
mkdir -p "$dir"
chmod 0700 "$dir"

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

make() { # name [content]
    if [ ! -s "$dir/$1" ]; then
        printf '%s\n' "${2:-$(random_hex)}" > "$dir/$1"
        chmod 0644 "$dir/$1"
        echo "made $dir/$1"
    fi
}

make mqtt_server_password
make influxdb_admin_password
make influxdb_token
make grafana_admin_password
make feed_key

if [ ! -s "$dir/api_tokens.toml" ]; then
    token="qn_$(random_hex)"
    sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
    printf '# API tokens (qingnuan-server token add appends here).\n[[token]]\nname = "admin"\nrole = "admin"\nsha256 = "%s"\n' "$sha" > "$dir/api_tokens.toml"
    chmod 0644 "$dir/api_tokens.toml"
    echo "made $dir/api_tokens.toml; the admin token (shown once, keep it): $token"
fi

if [ -z "${QN_SKIP_MOSQUITTO_PASSWD:-}" ]; then
    pw="$(cat "$dir/mqtt_server_password")"
    if command -v mosquitto_passwd >/dev/null 2>&1; then
        mosquitto_passwd -b ./mosquitto/passwd qingnuan-server "$pw"
    elif command -v docker >/dev/null 2>&1; then
        docker run --rm -v "$PWD/mosquitto:/m" eclipse-mosquitto:2 \
            mosquitto_passwd -b /m/passwd qingnuan-server "$pw"
    else
        echo "no mosquitto_passwd nor docker: set qingnuan-server's password in ./mosquitto/passwd yourself" >&2
        pw=""
    fi
    [ -n "$pw" ] && echo "set the password of qingnuan-server in ./mosquitto/passwd"
fi
echo "Give the city platform the key in $dir/feed_key (docs/city-feed.md)."
