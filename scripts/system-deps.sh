#!/usr/bin/env bash
# Install the Debian packages the test suite needs, if any is missing.
#
# The SSH tests start a private sshd (openssh-server, which also brings /etc/pam.d/sshd for the
# keyboard-interactive server) and drive it with the OpenSSH client and ssh-keygen
# (openssh-client); remote_magic.testing.sshd creates its test account with useradd/chpasswd
# (passwd, present on any Debian). The browser test (tests/test_browser.py) has Playwright drive
# Debian's /usr/bin/chromium, so it needs neither chromium-driver nor `playwright install`. Safe
# to run again and again: when everything is there it only looks at a few files. It never
# prompts. Not root (or no apt-get): it says what to install and carries on, and the tests that
# need the missing pieces will fail or skip.
set -euo pipefail

missing=()
[ -x /usr/sbin/sshd ] && [ -f /etc/pam.d/sshd ] || missing+=(openssh-server)
for tool in ssh ssh-keygen scp; do
  if ! command -v "$tool" >/dev/null 2>&1; then missing+=(openssh-client); break; fi
done
for tool in useradd chpasswd; do
  if ! [ -x "/usr/sbin/$tool" ] && ! command -v "$tool" >/dev/null 2>&1; then
    missing+=(passwd); break
  fi
done
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps.sh: the tests need ${missing[*]}; install as root with:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 0
fi

echo "system-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Wait for a dpkg lock held by another apt run rather than failing at once.
apt_get=(apt-get -q -y -o DPkg::Lock::Timeout=300)
if ! { "${apt_get[@]}" update && "${apt_get[@]}" install --no-install-recommends "${missing[@]}"; } \
    </dev/null >"$log" 2>&1; then
  cat "$log" >&2
  echo "system-deps.sh: apt-get failed" >&2
  exit 1
fi
