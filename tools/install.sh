#!/bin/sh
# make install / make uninstall: sipd in a Python environment of its own.
#
#   tools/install.sh install WHEEL PIP    (PIP: a pip that can install into another Python)
#   tools/install.sh uninstall
#
# Settings come from the environment, as the Makefile passes them: PREFIX,
# SYSCONFDIR, SYSTEMDUNITDIR, DESTDIR, SYSTEM_PYTHON. Paths written into
# files (the commands' interpreter, the unit's ExecStart) are the final
# ones; DESTDIR only says where to put the files for now.
#
# Layout, for PREFIX=/usr/local:
#   /usr/local/lib/sipd/              the package and its runtime dependencies,
#                                     a venv on Debian's python3, readable by all
#   /usr/local/sbin/sipd              the daemon (root's PATH)
#   /usr/local/bin/sippasswd          for every user (their own password)
#   /usr/local/share/man/man{1,5,8}/  the manual pages, where man finds them
#   /usr/local/lib/systemd/system/sipd.service
#                                     systemd's directory for units installed
#                                     by the administrator: /etc/systemd/system
#                                     stays free for overrides (systemctl edit)
#   /etc/pam.d/sipd, /etc/sipd/sipd.conf, /etc/fail2ban/{filter,jail}.d/sipd.conf
#                                     only when absent: an existing file is the
#                                     administrator's
#
# Everything install creates, directories included, is listed in
# $PREFIX/lib/sipd/installed-files; uninstall removes exactly that, and a
# file under /etc only while it is as install left it (installed-conf.sha256).
set -eu
umask 022

PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
SYSTEMDUNITDIR=${SYSTEMDUNITDIR:-$PREFIX/lib/systemd/system}
DESTDIR=${DESTDIR:-}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
LIBDIR=$PREFIX/lib/sipd
MANIFEST=$LIBDIR/installed-files
SUMS=$LIBDIR/installed-conf.sha256

here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/files"
: >"$work/sums"

say() { echo "$1: $2" >&2; }

# The checksum recorded for PATH in a sums file ("SUM PATH" lines), or nothing.
sum_of() {
    while read -r sum p; do
        if [ "$p" = "$1" ]; then
            echo "$sum"
            return 0
        fi
    done <"$2"
}

# Record a path (final, without DESTDIR) in the new manifest.
record() { printf '%s %s\n' "$1" "$2" >>"$work/files"; }

# Create a directory and every missing parent, recording each one created.
ensure_dir() {
    [ -d "$DESTDIR$1" ] && return 0
    if [ "$1" = / ]; then
        mkdir -p "$DESTDIR/"
        return 0
    fi
    ensure_dir "$(dirname "$1")"
    mkdir -m 0755 "$DESTDIR$1"
    record dir "$1"
}

put() { # MODE SOURCE DEST: a file of ours, replaced on every install
    ensure_dir "$(dirname "$3")"
    install -m "$1" "$2" "$DESTDIR$3"
    record file "$3"
}

put_conf() { # SOURCE DEST: a configuration file, only where there is none
    if [ -e "$DESTDIR$2" ] || [ -L "$DESTDIR$2" ]; then
        echo "install: keeping $2 as it is"
        return 0
    fi
    ensure_dir "$(dirname "$2")"
    install -m 0644 "$1" "$DESTDIR$2"
    record conf "$2"
    printf '%s %s\n' "$(sha256sum <"$DESTDIR$2" | cut -d' ' -f1)" "$2" >>"$work/sums"
}

reload_systemd() {
    # Only on the running system, and only if systemd runs it.
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
}

install_all() {
    wheel=$1
    pip=$2
    if ! "$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say install "$SYSTEM_PYTHON is not Python 3.11 or later (set SYSTEM_PYTHON)"
        exit 1
    fi
    if [ -f "$DESTDIR$MANIFEST" ]; then
        cp "$DESTDIR$MANIFEST" "$work/old-files"
        cp "$DESTDIR$SUMS" "$work/old-sums" 2>/dev/null || : >"$work/old-sums"
    fi

    # The environment is built beside the one in use and then swapped in,
    # so a running sipd finds its modules until the moment it is restarted.
    stage=$DESTDIR$LIBDIR.new
    ensure_dir "$(dirname "$LIBDIR")"
    rm -rf "$stage"
    "$SYSTEM_PYTHON" -m venv --without-pip "$stage"
    # pip itself stays out: the environment holds sipd and what it runs on.
    "$pip" --python "$stage/bin/python3" install --quiet --no-compile \
        --no-warn-script-location "$wheel"
    # Bytecode compiled for the final path, so tracebacks name real files,
    # and so that users running sippasswd need not write any.
    "$stage/bin/python3" -m compileall -q -j 0 -s "$stage" -p "$LIBDIR" "$stage/lib" >/dev/null
    # The scripts pip and venv wrote name the staging path; ours follow.
    find "$stage/bin" -type f -delete
    sed -i '/^command = /d' "$stage/pyvenv.cfg"
    chmod -R u=rwX,go=rX "$stage"
    if [ -d "$DESTDIR$LIBDIR" ]; then
        rm -rf "$DESTDIR$LIBDIR.old"
        mv "$DESTDIR$LIBDIR" "$DESTDIR$LIBDIR.old"
    fi
    mv "$stage" "$DESTDIR$LIBDIR"
    rm -rf "$DESTDIR$LIBDIR.old"
    record tree "$LIBDIR"

    # -I: no PYTHONPATH, user site or working directory can change what
    # runs, least of all in the root daemon.
    for cmd in sbin/sipd:sipd.cli bin/sippasswd:srfs.sippasswd; do
        path=${cmd%%:*}
        module=${cmd#*:}
        printf '#!%s/bin/python3 -I\nimport sys\n\nfrom %s import main\n\nsys.exit(main())\n' \
            "$LIBDIR" "$module" >"$work/cmd"
        put 0755 "$work/cmd" "$PREFIX/$path"
    done

    for page in "$here"/man/*.[1-8]; do
        name=$(basename "$page")
        put 0644 "$page" "$PREFIX/share/man/man${name##*.}/$name"
    done

    sed "s|@SBINDIR@|$PREFIX/sbin|g" "$here/contrib/systemd/sipd.service" >"$work/unit"
    put 0644 "$work/unit" "$SYSTEMDUNITDIR/sipd.service"

    put_conf "$here/pam/sipd" "$SYSCONFDIR/pam.d/sipd"
    "$DESTDIR$LIBDIR/bin/python3" -I -m sipd.cli --print-sample-config >"$work/sipd.conf"
    put_conf "$work/sipd.conf" "$SYSCONFDIR/sipd/sipd.conf"
    for part in filter.d jail.d; do
        if [ -f "$here/contrib/fail2ban/$part/sipd.conf" ]; then
            put_conf "$here/contrib/fail2ban/$part/sipd.conf" "$SYSCONFDIR/fail2ban/$part/sipd.conf"
        fi
    done

    # What an earlier install made and this one did not touch stays listed.
    if [ -f "$work/old-files" ]; then
        while read -r kind path; do
            if ! grep -qxF "$kind $path" "$work/files" \
                && { [ -e "$DESTDIR$path" ] || [ -L "$DESTDIR$path" ]; }; then
                record "$kind" "$path"
            fi
        done <"$work/old-files"
        while read -r sum path; do
            if [ -z "$(sum_of "$path" "$work/sums")" ] && grep -qxF "conf $path" "$work/files"; then
                printf '%s %s\n' "$sum" "$path" >>"$work/sums"
            fi
        done <"$work/old-sums"
    fi
    install -m 0644 "$work/files" "$DESTDIR$MANIFEST"
    install -m 0644 "$work/sums" "$DESTDIR$SUMS"
    reload_systemd
    echo "install: sipd is in $PREFIX; next, as root:"
    echo "  getent group sip || groupadd --system sip"
    echo "  sipd --check-config && systemctl enable --now sipd"
}

uninstall_all() {
    if [ ! -f "$DESTDIR$MANIFEST" ]; then
        say uninstall "no sipd installed in $PREFIX ($MANIFEST is missing)"
        exit 1
    fi
    cp "$DESTDIR$MANIFEST" "$work/files"
    cp "$DESTDIR$SUMS" "$work/sums" 2>/dev/null || : >"$work/sums"
    while read -r kind path; do
        target=$DESTDIR$path
        case $kind in
            file) rm -f "$target" ;;
            tree) rm -rf "$target" ;;
            conf)
                [ -e "$target" ] || continue
                want=$(sum_of "$path" "$work/sums")
                have=$(sha256sum <"$target" | cut -d' ' -f1)
                if [ -n "$want" ] && [ "$want" = "$have" ]; then
                    rm -f "$target"
                else
                    echo "uninstall: keeping $path: changed since it was installed"
                fi
                ;;
        esac
    done <"$work/files"
    # Deepest first; a directory that holds anything else stays.
    sed -n 's/^dir //p' "$work/files" | sort -r | while read -r path; do
        rmdir "$DESTDIR$path" 2>/dev/null || true
    done
    reload_systemd
    echo "uninstall: done (the group sip and users' ~/.sr stay)"
}

case ${1:-} in
    install) install_all "$2" "$3" ;;
    uninstall) uninstall_all ;;
    *) say install.sh "usage: install.sh install WHEEL PIP | uninstall"; exit 2 ;;
esac
