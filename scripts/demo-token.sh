#!/usr/bin/env bash
# Prints a JWT that the quick start's /secure/profile route accepts: HS256, signed with the demo
# secret in examples/demo/jwt-secret (a demo secret: never use it anywhere else), issuer
# `tollgate-demo`, subject $1 (default `ada`), valid for an hour.
#
#   curl -H "authorization: Bearer $(./scripts/demo-token.sh)" http://127.0.0.1:8080/secure/profile
set -euo pipefail
cd "$(dirname "$0")/.."

sub="${1:-ada}"
if [[ ! "$sub" =~ ^[A-Za-z0-9._-]{1,64}$ ]]; then
  echo "demo-token: the subject is 1 to 64 of A-Z a-z 0-9 . _ -" >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "demo-token: needs openssl" >&2; exit 1; }

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"tollgate-demo","sub":"%s","iat":%d,"exp":%d}' "$sub" "$now" "$((now + 3600))" | b64url)
# The gateway drops the secret file's trailing newline; so does $(...).
secret="$(cat examples/demo/jwt-secret)"
signature=$(printf '%s.%s' "$header" "$payload" |
  openssl dgst -sha256 -mac HMAC -macopt "key:$secret" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
