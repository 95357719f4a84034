#!/bin/sh
# Install the Debian packages sipd and its tests need, only when one is
# missing, so a second `make setup` costs one dpkg-query.
set -eu
PACKAGES="fuse3 libfuse3-dev pkg-config sip-tester libnss-wrapper libpam-wrapper libpam-modules baresip-core"
missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: these Debian packages are missing:$missing; run 'make setup' as root" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
