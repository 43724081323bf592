#!/bin/sh
# Install packages into /opt/venv inside an image build, pinned by requirements/lock.txt.
#
#   pip-install.sh PACKAGE_OR_PATH...
#
# The lock file is the constraints file, so every image gets the versions CI tested. Its
# editable lines name the repository's own packages, which pip refuses as constraints: they are
# dropped. Downloads trust the optional "extra_ca" build secret (see with-extra-ca.sh).
set -eu
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
grep -v '^-e ' /src/requirements/lock.txt > "$constraints"
PIP_CONSTRAINT="$constraints" with-extra-ca /opt/venv/bin/pip install --no-cache-dir \
    --no-compile -c "$constraints" "$@"
