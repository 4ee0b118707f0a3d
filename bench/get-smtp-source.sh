#!/bin/sh
# Fetch Postfix's smtp-source without installing Postfix: the Debian package is downloaded
# and unpacked into bench/.tools/postfix (gitignored); run.py finds it there. No daemon runs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/.tools"
cd "$here/.tools"
apt-get download postfix
dpkg -x postfix_*.deb postfix
rm -f postfix_*.deb
LD_LIBRARY_PATH="$here/.tools/postfix/usr/lib/postfix" "$here/.tools/postfix/usr/sbin/smtp-source" 2>&1 \
    | grep -q usage && echo "smtp-source ready: $here/.tools/postfix/usr/sbin/smtp-source"
