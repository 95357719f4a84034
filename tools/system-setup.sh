#!/bin/sh
# Install the Debian packages sipd needs, only when one is missing, so a
# second run costs one dpkg-query.
#
#   system-setup.sh run      running sipd from the checkout (make run)
#   system-setup.sh install  building it into its own prefix (make install)
#   system-setup.sh test     all of that and what the tests drive (make test)
set -eu
mode=${1:-test}

# fuse3: fusermount3 and /dev/fuse's rules; libfuse3-dev and pkg-config:
# building pyfuse3; libpam-modules: pam_unix and pam_succeed_if of pam/sipd.
RUN="fuse3 libfuse3-dev pkg-config libpam-modules"
# The environment of make install is built on Debian's python3, against
# whose headers pyfuse3 is compiled.
INSTALL="$RUN python3 python3-venv python3-dev"
# baresip-core and linphone-cli (linphone-daemon) are the softphones of the
# end-to-end tests; without recommends, linphone-cli leaves out the
# mediastreamer2 codec plugins and what they pull in, which the tests do not
# need. man-db: man(1) on the installed pages; systemd: systemd-analyze
# verify on the unit (neither needs systemd to be running); fail2ban and
# prometheus: fail2ban-regex and promtool on what sipd logs and serves, and
# the prometheus server that scrapes its metrics endpoint.
# rtpengine-daemon: the media relay the end-to-end tests relay calls
# through (run in userspace, on 127.0.0.1, by the tests themselves).
# kamailio: a real customer PBX in the ITSP tests (tests/pbx/), registering
# its DID with uac_reg and relaying calls; its service is not started here.
# iproute2 and iptables: a real NAT for a phone (network namespaces, veth
# pairs, MASQUERADE inside a namespace; tests/netns.py).
# chromium: the browser a web phone (JsSIP, which the test installs with
# npm under build/) registers and calls from over wss, headless;
# libnss3-tools: certutil, which makes Chromium trust the test's CA the way
# a user's browser is made to (tests/e2e/test_browser_phone_e2e.py).
# slapd, libnss-ldapd (nslcd and its NSS module) and ldap-utils: a real
# directory the tests start in their own configuration and namespace
# (tests/ldapdir.py); installing them leaves /etc/nsswitch.conf as it was
# (debconf's default enables no service), and their services are not started.
TEST="$INSTALL sip-tester strace libnss-wrapper libpam-wrapper baresip-core linphone-cli mandoc man-db systemd fail2ban prometheus rtpengine-daemon kamailio iproute2 iptables chromium libnss3-tools slapd libnss-ldapd ldap-utils"

case $mode in
    run) PACKAGES=$RUN target=run ;;
    install) PACKAGES=$INSTALL target=install ;;
    test) PACKAGES=$TEST target=setup ;;
    *) echo "setup: unknown mode $mode (run, install or test)" >&2; exit 2 ;;
esac

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
# nodejs and npm: npm installs JsSIP for the browser phone test. An npm
# already on PATH is used as it is: NodeSource's nodejs carries its own and
# conflicts with Debian's npm package.
if [ "$mode" = test ] && ! command -v npm >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: these Debian packages are missing:$missing; run 'make $target' as root" >&2
        exit 1
    fi
    new_services=""
    [ "$mode" = test ] && for service in slapd nslcd; do
        case "$(dpkg-query -W -f='${Status}' "$service" 2>/dev/null || true)" in
            *"install ok installed"*) ;;
            *) new_services="$new_services $service" ;;
        esac
    done
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    case " $missing " in
        *" kamailio "*)
            # The package enables its service, which would take port 5060
            # from make run: the tests start Kamailio themselves.
            if [ -d /run/systemd/system ]; then
                systemctl disable --now kamailio.service || true
            fi ;;
    esac
    # Likewise slapd (port 389, a directory of its own) and nslcd (which
    # libnss-ldapd pulls in), when this run installed them: the tests run
    # their own.
    for service in $new_services; do
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service.service" || true
        fi
    done
fi

# make install puts the PAM file in place itself (into DESTDIR) and leaves
# accounts to the administrator.
[ "$mode" = install ] && exit 0

# sipd refuses to start without its PAM service file (libpam would fall
# back to "other") and without its group; an existing file or group is the
# administrator's and is left alone.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -e /etc/pam.d/sipd ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: /etc/pam.d/sipd is missing; run 'make $target' as root" >&2
        exit 1
    fi
    install -m 0644 "$here/pam/sipd" /etc/pam.d/sipd
    echo "setup: installed /etc/pam.d/sipd"
fi
if ! getent group sip >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: group sip is missing; run 'make $target' as root" >&2
        exit 1
    fi
    groupadd --system sip
    echo "setup: created group sip"
fi
