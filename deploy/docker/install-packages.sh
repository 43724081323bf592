#!/bin/sh
# Install Forgeline's packages into an image's /opt/venv, in the two steps every service image
# takes (one RUN each; the Dockerfiles differ only in the packages they name):
#
#   install-packages.sh third-party PACKAGE_DIR... [REQUIREMENT...]
#       the `deps` stage: the third-party requirements of each PACKAGE_DIR (an absolute path,
#       optionally with [extras]; read from its pyproject.toml alone by third-party-deps.py, so
#       this layer never sees Forgeline's sources and a code change does not reinstall torch),
#       then any further REQUIREMENT as it is; then the venv byte-compiled, so the read-only venv
#       needs no writes at import time.
#   install-packages.sh own PACKAGE_DIR...
#       the `build` stage: the packages themselves with --no-deps, under /staging (pip --root),
#       so that the runtime stage copies them as a small layer of their own; then `pip check` of
#       the venv with them, and their bytecode compiled for the paths they are installed at.
#
# Both go through pip-install.sh: the lock file as constraints, the optional extra_ca secret.
set -eu
mode=${1:-}
[ $# -gt 0 ] && shift
case $mode in
third-party)
    requirements=$(mktemp)
    extra=$(mktemp)
    trap 'rm -f "$requirements" "$extra"' EXIT
    # Keep the package directories in "$@"; set the requirements named as they are aside.
    for arg do
        shift
        case $arg in
        /*) set -- "$@" "$arg" ;;
        *) printf '%s\n' "$arg" >>"$extra" ;;
        esac
    done
    /opt/venv/bin/python /usr/local/lib/forgeline/third-party-deps.py "$@" >"$requirements"
    cat "$extra" >>"$requirements"
    pip-install -r "$requirements"
    # Some dependencies ship files for newer Pythons (torch's py312 test helpers) or not Python 3
    # at all: compileall reports them, and the rest is compiled all the same.
    /opt/venv/bin/python -m compileall -q /opt/venv >/dev/null || true
    ;;
own)
    pip-install --no-deps --root /staging "$@"
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    PYTHONPATH="/staging$site" /opt/venv/bin/pip check
    /opt/venv/bin/python -m compileall -q -s /staging -p / /staging
    ;;
*)
    echo "usage: install-packages.sh third-party|own PACKAGE_DIR... (see its header)" >&2
    exit 2
    ;;
esac
