#!/bin/sh
# Install the Debian packages sipd and its tests need, only when one is
# missing, so a second `make setup` costs one dpkg-query.
set -eu
# baresip-core and linphone-cli (linphone-daemon) are the softphones of the
# end-to-end tests; without recommends, linphone-cli leaves out the
# mediastreamer2 codec plugins and what they pull in, which the tests do not need.
PACKAGES="fuse3 libfuse3-dev pkg-config sip-tester libnss-wrapper libpam-wrapper libpam-modules baresip-core linphone-cli mandoc fail2ban prometheus"
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

# sipd refuses to start without its PAM service file (libpam would fall
# back to "other") and without its group; an existing file or group is the
# administrator's and is left alone.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -e /etc/pam.d/sipd ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: /etc/pam.d/sipd is missing; run 'make setup' as root" >&2
        exit 1
    fi
    install -m 0644 "$here/pam/sipd" /etc/pam.d/sipd
    echo "setup: installed /etc/pam.d/sipd"
fi
if ! getent group sip >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: group sip is missing; run 'make setup' as root" >&2
        exit 1
    fi
    groupadd --system sip
    echo "setup: created group sip"
fi
