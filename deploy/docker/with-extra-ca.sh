#!/bin/sh
# Run a command that downloads (pip, the llama.cpp sdist fetch) trusting an extra CA bundle.
#
#   with-extra-ca.sh COMMAND [ARG...]
#
# Behind a TLS-intercepting proxy, pass its CA as the BuildKit secret "extra_ca"
# (docker build --secret id=extra_ca,src=FILE). The merged bundle lives in a temporary file for
# this one command only, so no layer of any image ever holds it. Without the secret the command
# runs unchanged.
set -eu
if [ ! -s /run/secrets/extra_ca ]; then
    exec "$@"
fi
bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra_ca > "$bundle"
PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle" "$@"
