# Sourced by scripts/demo and scripts/test. Installs what a fresh Debian machine
# (as root) lacks, then a virtualenv in .venv with the suite and its tools.
# Idempotent: a second run installs nothing.
set -euo pipefail

top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$top/.venv"

if [ "$(id -u)" -ne 0 ]; then
    echo "run this as root: it installs Debian packages and the tests create users and groups" >&2
    exit 2
fi

missing=()
# Debian's own Python: the .venv, the Debian 12 row and the unit tier all run on it.
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null ||
    missing+=(python3 python3-venv)
[ -x /usr/bin/pebble ] || command -v pebble >/dev/null 2>&1 || missing+=(pebble)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v groupadd >/dev/null 2>&1 || missing+=(passwd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)  # the fleet benchmark's baseline
command -v ansible-playbook >/dev/null 2>&1 || missing+=(ansible-core)  # examples/ansible, tested
command -v getfacl >/dev/null 2>&1 || missing+=(acl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies the units
# The units booted for real: a Debian 12 root (below) in systemd-nspawn.
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
# The Debian 12 row: Debian's certbot and its libraries, Debian's pytest, and the
# tools a Debian package build uses (setuptools, wheel, build), never PyPI's.
[ -x /usr/bin/certbot ] || missing+=(certbot)
dpkg -s python3-pytest python3-build python3-setuptools python3-wheel >/dev/null 2>&1 ||
    missing+=(python3-pytest python3-build python3-setuptools python3-wheel)
# The DANE gate's DNS library, as Debian ships it (imported only for tlsa = targets).
dpkg -s python3-dnspython >/dev/null 2>&1 || missing+=(python3-dnspython)
# The daemons the end-to-end tests run (each test starts its own private instance).
daemons=()
[ -x /usr/sbin/postfix ] || daemons+=(postfix)
[ -x /usr/sbin/haproxy ] || daemons+=(haproxy)
[ -x /usr/sbin/nginx ] || daemons+=(nginx-light)
[ -x /usr/sbin/dovecot ] || daemons+=(dovecot-imapd)
[ -x /usr/sbin/mosquitto ] || daemons+=(mosquitto)
[ -x /usr/sbin/apache2 ] || daemons+=(apache2)
[ -x /usr/sbin/slapd ] || daemons+=(slapd)
[ -x /usr/bin/prosody ] || daemons+=(prosody)
[ -x /usr/share/tomcat10/bin/catalina.sh ] || daemons+=(tomcat10)
[ -x /usr/sbin/couriertcpd ] || daemons+=(courier-base)
dpkg -s samba-ad-dc samba-ad-provision >/dev/null 2>&1 || daemons+=(samba-ad-dc samba-ad-provision)
[ -x /usr/sbin/sshd ] || daemons+=(openssh-server)  # private sshd "hosts" for pushes
# The DANE tests: an authoritative server (signing, RFC 2136), its client tools
# (kdig, knsupdate), and a validating resolver.
[ -x /usr/sbin/knotd ] && [ -x /usr/bin/knsupdate ] || daemons+=(knot knot-dnsutils)
[ -x /usr/sbin/unbound ] || daemons+=(unbound)
# Exim, OpenSMTPD, sendmail and courier-imap conflict with Postfix (or Dovecot): they
# are unpacked below, never installed; what they link against is installed here.
dpkg -s libidn12 liblockfile1 m4 >/dev/null 2>&1 || daemons+=(libidn12 liblockfile1 m4)
if [ ${#missing[@]} -gt 0 ] || [ ${#daemons[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]} ${daemons[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's maintainer scripts start services; no daemon may be left running:
    # policy-rc.d (kept if it was there, removed after if we made it) forbids it.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" "${daemons[@]}" >/dev/null ||
        status=$?
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
    [ "$status" -eq 0 ] || { echo "apt-get install failed ($status)" >&2; exit "$status"; }
fi
export PATH="$PATH:/usr/sbin:/sbin:/usr/bin"

# Daemons whose Debian package conflicts with one installed above: the package's files,
# from Debian's archive, unpacked (apt-get download, dpkg -x; no maintainer script runs)
# into a cache the tests find them in (tests/support/daemons.py: UNPACKED). Kept between
# runs; a package is fetched again when the archive has another version.
unpacked=/var/cache/certbot-daemon-keys-tests
for pkg in exim4-daemon-light opensmtpd courier-imap sendmail-bin sendmail-base sendmail-cf; do
    version="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
    [ -n "$version" ] && [ "$version" != "(none)" ] ||
        { apt-get update -qq && version="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"; }
    stamp="$unpacked/$pkg.version"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] && continue
    echo "unpacking $pkg $version into $unpacked"
    mkdir -p "$unpacked/debs"
    chown _apt "$unpacked/debs" 2>/dev/null || true  # apt fetches as _apt where it can
    (cd "$unpacked/debs" && rm -f "${pkg}"_*.deb && apt-get download -qq "$pkg=$version")
    dpkg -x "$unpacked/debs/${pkg}_"*.deb "$unpacked/root"
    printf '%s\n' "$version" >"$stamp"
done

# The Debian 12 the unit tests boot with systemd-nspawn (tests/support/container.py):
# built once with mmdebstrap from the archive apt uses, rebuilt when its package list
# changes; each boot gets a volatile overlay, so it stays as built.
ct_root="$unpacked/nspawn-root"
ct_packages="systemd,systemd-sysv,dbus,python3,python3-cryptography,python3-configobj,postfix,openssl,certbot,pebble"
if [ "$(cat "$ct_root.packages" 2>/dev/null)" != "$ct_packages" ]; then
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
              grep -v security | head -n 1)"
    echo "building the container root $ct_root (mmdebstrap, about 30 s)"
    rm -rf "$ct_root" "$ct_root.new" "$unpacked/scratch"
    mkdir -p "$unpacked/scratch"
    TMPDIR="$unpacked/scratch" mmdebstrap --quiet --variant=minbase --include="$ct_packages" \
        bookworm "$ct_root.new" "${mirror:-http://deb.debian.org/debian}"
    rm -rf "$unpacked/scratch"
    mv "$ct_root.new" "$ct_root"
    printf '%s\n' "$ct_packages" >"$ct_root.packages"
fi

# An editable install in setuptools' strict mode: a .pth naming a tree of links to
# the sources, so starting python costs what it costs with a real install (the
# default mode imports a finder, pathlib and re into every interpreter: +15 ms,
# which the hook benchmarks would measure). It links files, so the stamp holds
# the list of modules and a new module reinstalls.
stamp="$venv/.installed"
modules="$(cd "$top" && find daemon_keys certbot_perms certbot_atomic_deploy -name '*.py' | sort)
base /usr/bin/python3"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] ||
   [ "$top/setup.cfg" -nt "$stamp" ] || [ "$top/tox.ini" -nt "$stamp" ] ||
   [ "$modules" != "$(cat "$stamp")" ]; then
    echo "setting up $venv"
    /usr/bin/python3 -m venv --clear "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$top[test,lint]" tox types-pyOpenSSL \
        --config-settings editable_mode=strict
    printf '%s\n' "$modules" >"$stamp"
fi
