#!/bin/sh
# How model-registry is built and installed from this repository, in one place:
# the Dockerfile runs it, and tests/test_packaging.py runs it the same way, so the
# image installs exactly what the tests installed and ran.
#
#   sh deploy/install-wheels.sh build  PYTHON WHEELS  build both wheels into WHEELS, from
#                                                     the source tree this script is in
#   sh deploy/install-wheels.sh server PYTHON WHEELS  install the server and the client it
#                                                     pins into PYTHON's environment
#   sh deploy/install-wheels.sh client PYTHON WHEELS  install the light client alone (what a
#                                                     worker's or router's host needs)
#
# The wheels are installed by file, never by project name: model-registry-sdk is
# on no package index, and "model-registry" on PyPI is another project.
# Their dependencies (aiohttp, SQLAlchemy, ...) come from the package index.
set -eu

usage() {
    echo "usage: $0 build|server|client PYTHON WHEELS" >&2
    exit 2
}
[ $# -eq 3 ] || usage
action=$1 python=$2 wheels=$3
case $wheels in
/*) ;;
*) wheels=$PWD/$wheels ;;
esac

case $action in
build)
    cd "$(dirname "$0")/.."
    "$python" -m pip wheel --no-deps --wheel-dir "$wheels" ./clients/python .
    ;;
server)
    "$python" -m pip install "$wheels"/model_registry_sdk-*.whl "$wheels"/model_registry-*.whl
    ;;
client)
    "$python" -m pip install "$wheels"/model_registry_sdk-*.whl
    ;;
*)
    usage
    ;;
esac
