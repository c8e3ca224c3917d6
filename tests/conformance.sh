#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzingclient (cases 1.*
# to 10.*: framing, pings, reserved bits, opcodes, fragmentation, UTF-8,
# close handling, limits; with --deflate also 12.* and 13.*,
# permessage-deflate) against wsgate's echo app and fails on any failed case.
#
#   tests/conformance.sh [--bin PATH] [--url URL] [--cases LIST]
#                        [--exclude LIST] [--deflate] [--out DIR]
#                        [--timeout SECS]
#
#   --bin PATH       the wsgate to test (default: target/release/wsgate,
#                    built with cargo)
#   --url URL        test a server that is already running there instead
#                    (it must echo every message back unchanged)
#   --cases LIST     comma-separated case ids or globs (default '*')
#   --exclude LIST   cases to skip (default '12.*,13.*', the
#                    permessage-deflate cases, unless --deflate)
#   --tls            run the server with a throwaway self-signed certificate
#                    (made with openssl in a temporary folder) and test it
#                    over wss://
#   --deflate        run the server with --permessage-deflate and include
#                    12.* and 13.* (RFC 7692); an explicit --exclude wins
#   --out DIR        reports: index.html, index.json, one file per case
#                    (default target/autobahn)
#   --timeout SECS   limit for the whole suite run (default 900)
#
# Prerequisites: a Debian-based system (apt-get, dpkg-deb), python3 with pip,
# and access to a Debian mirror and PyPI. The suite (autobahntestsuite
# 25.10.1) runs on Python 2.7 only, which current Debian does not ship: the
# first run downloads Python 2.7 from Debian 11 (bullseye) packages and
# unpacks them, with the suite and its pinned dependencies, into
# $AUTOBAHN_HOME (default ~/.cache/wsgate-autobahn, about 120 MB); later runs
# reuse that folder. System-wide, only python3-pip, debian-archive-keyring
# and flock (util-linux) are installed from apt, and only when missing.
#
# Exit status: 0 when every selected case passed (OK, NON-STRICT or
# INFORMATIONAL), 1 when a case failed or did not run, 2 for a usage error,
# 3 when the suite could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "conformance: $*" >&2; echo "try: tests/conformance.sh --help" >&2; exit 2; }
say() { echo "conformance: $*" >&2; }

bin="" url="" cases='*' exclude='12.*,13.*' exclude_set="" deflate="" tls="" out=target/autobahn budget=900
while [ $# -gt 0 ]; do
  case "$1" in
    --bin|--url|--cases|--exclude|--out|--timeout) [ $# -ge 2 ] || die "$1 needs a value" ;;&
    --bin) bin=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --exclude) exclude=$2; exclude_set=1; shift 2 ;;
    --deflate) deflate=1; shift ;;
    --tls) tls=1; shift ;;
    --out) out=$2; shift 2 ;;
    --timeout) budget=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
case "$budget" in ''|*[!0-9]*|0) die "--timeout must be whole seconds above 0" ;; esac
[ -n "$deflate" ] && [ -z "$exclude_set" ] && exclude=''
case "$url" in ''|ws://?*|wss://?*) ;; *) die "--url must be ws://HOST:PORT/PATH or wss://..." ;; esac

# --- the suite: Python 2.7 from Debian 11 packages, then pinned PyPI packages --
SUITE=autobahntestsuite==25.10.1
home=${AUTOBAHN_HOME:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/wsgate-autobahn}
# What makes an install complete; a different text means reinstall.
stamp="$SUITE py2.7.18-bullseye v1"
debs=(python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib
      libpython2.7-dev libssl1.1 libffi7)
# The last releases that support Python 2.7 of pip and its build tools, and
# the suite's dependency set known to work together.
bootstrap=(pip==20.3.4 setuptools==44.1.1 wheel==0.37.1)
packages=("$SUITE" autobahn==0.10.9 txaio==2.1.0 Twisted==19.10.0 zope.interface==4.6.0
  incremental==16.10.1 constantly==15.1.0 Automat==22.10.0 hyperlink==21.0.0
  PyHamcrest==1.10.1 attrs==21.4.0 six==1.16.0 idna==2.10 pyOpenSSL==19.1.0
  cryptography==3.3.2 cffi==1.15.1 pycparser==2.21 enum34==1.1.10 ipaddress==1.0.23
  service-identity==18.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0 Jinja2==2.11.3
  MarkupSafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0 typing==3.10.0.0 unittest2==1.1.0
  traceback2==1.4.0 linecache2==1.0.0 ujson==2.0.3)
fail_install() { say "cannot install the suite: $* (log: $home/install.log)"; exit 3; }

# The few system packages the install needs, from apt when they are missing
# (as root, or with sudo).
install_prerequisites() {
  local need=() sudo=""
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
  command -v flock >/dev/null || need+=(util-linux)
  [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null || return 0
  [ "$(id -u)" = 0 ] || sudo=sudo
  say "installing ${need[*]} with apt-get"
  $sudo apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    say "could not install ${need[*]}"
}

install_suite() {
  local tool mirror arch apt_root keyring libdir
  for tool in apt-get dpkg-deb python3; do
    command -v "$tool" >/dev/null || fail_install "$tool is needed (a Debian-based system)"
  done
  python3 -m pip --version >/dev/null 2>&1 || fail_install "python3 -m pip is needed (apt-get install python3-pip)"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || fail_install "$keyring is needed (apt-get install debian-archive-keyring)"
  # The Debian mirror apt already uses (not the security one).
  mirror=${AUTOBAHN_DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(LABEL)' 2>/dev/null |
    awk '$2 == "Debian" { print $1; exit }')}
  [ -n "$mirror" ] || fail_install "no Debian mirror in apt's sources (run apt-get update, or set AUTOBAHN_DEBIAN_MIRROR)"
  arch=$(dpkg --print-architecture)
  say "installing $SUITE into $home (first run only)"
  rm -rf "$home"
  mkdir -p "$home"
  : >"$home/install.log"
  # A private apt state that knows only bullseye: the system's is untouched.
  apt_root=$home/apt
  mkdir -p "$apt_root"/etc/apt/{apt.conf.d,preferences.d,sources.list.d} \
    "$apt_root"/var/lib/apt/lists/partial "$apt_root"/var/cache/apt/archives/partial "$apt_root"/debs
  : >"$apt_root/status"
  echo "deb [arch=$arch signed-by=$keyring] ${mirror%/} bullseye main" >"$apt_root/etc/apt/sources.list"
  local apt=(apt-get -q -o "Dir=$apt_root" -o "Dir::Etc=$apt_root/etc/apt"
             -o "Dir::State::status=$apt_root/status" -o Debug::NoLocking=1
             -o Acquire::Languages=none -o "APT::Architecture=$arch" -o "APT::Architectures=$arch")
  [ "$(id -u)" = 0 ] && apt+=(-o APT::Sandbox::User=root)
  "${apt[@]}" update >>"$home/install.log" 2>&1 || fail_install "apt-get update for bullseye failed"
  (cd "$apt_root/debs" && "${apt[@]}" download "${debs[@]}") >>"$home/install.log" 2>&1 ||
    fail_install "apt-get download ${debs[*]} failed"
  for deb in "$apt_root"/debs/*.deb; do
    dpkg-deb -x "$deb" "$home/root" || fail_install "dpkg-deb -x $deb failed"
  done
  libdir=$(find "$home/root/usr/lib" -maxdepth 1 -type d -name '*-linux-gnu*' | head -n1)
  mkdir -p "$home/bin"
  # -s -E: the user's site-packages and PYTHON* variables stay out.
  cat >"$home/bin/python" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="${libdir:-$home/root/usr/lib}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$home/root/usr/bin/python2.7" -s -E "\$@"
EOF
  chmod +x "$home/bin/python"
  "$home/bin/python" -c 'import ssl, zlib' >>"$home/install.log" 2>&1 ||
    fail_install "the unpacked Python 2.7 does not start"
  local pip_env=(env PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_REQUIRE_VIRTUALENV=0
                 PIP_USER=0 PYTHONWARNINGS=ignore)
  # pip for Python 2.7, fetched by this system's pip, run from its wheel.
  python3 -m pip download -q --no-deps -d "$home/wheels" "${bootstrap[@]}" >>"$home/install.log" 2>&1 ||
    fail_install "pip download ${bootstrap[*]} failed"
  "${pip_env[@]}" "$home/bin/python" "$(ls "$home"/wheels/pip-*.whl)/pip" install -q --no-index \
    --find-links "$home/wheels" --no-warn-script-location "${bootstrap[@]}" >>"$home/install.log" 2>&1 ||
    fail_install "installing pip for Python 2.7 failed"
  "${pip_env[@]}" "$home/bin/python" -m pip install -q --no-deps --no-warn-script-location \
    "${packages[@]}" >>"$home/install.log" 2>&1 || fail_install "pip install $SUITE failed"
  # Optional C speed-up of the suite's masking (about 2x); needs a C compiler.
  "${pip_env[@]}" CFLAGS="-I$home/root/usr/include/python2.7 -I$home/root/usr/include" \
    "$home/bin/python" -m pip install -q --no-deps wsaccel==0.6.6 >>"$home/install.log" 2>&1 ||
    say "note: wsaccel did not build (no C compiler?); the suite runs slower"
  "$home/bin/python" -c 'import autobahntestsuite' >>"$home/install.log" 2>&1 ||
    fail_install "the suite does not import"
  rm -rf "$apt_root" "$home/wheels"
  echo "$stamp" >"$home/installed"
}

if [ "$(cat "$home/installed" 2>/dev/null)" != "$stamp" ]; then
  install_prerequisites
  mkdir -p "$(dirname "$home")"
  # Two first runs at once: the second waits for the first's install.
  exec 8>"$home.lock"
  flock 8
  [ "$(cat "$home/installed" 2>/dev/null)" = "$stamp" ] || install_suite
  exec 8>&-
fi
wstest=$(find "$home/root/usr/local/bin" "$home/root/usr/bin" -name wstest 2>/dev/null | head -n1)
[ -n "$wstest" ] || fail_install "wstest is missing from $home"

# --- the server under test: wsgate's echo app ----------------------------------
server=""
stop_server() {
  [ -n "$server" ] || return 0
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}
trap stop_server EXIT
if [ -z "$url" ]; then
  if [ -z "$bin" ]; then
    cargo build --release --locked --bin wsgate
    bin=target/release/wsgate
  fi
  [ -x "$bin" ] || die "--bin $bin is not an executable"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # The suite opens one connection per case from one address, sends up to
  # 16 MiB messages in up to 65,536 fragments, and pauses a few seconds in
  # some cases: the defaults allow all of that.
  tls_args=() scheme=ws
  if [ -n "$tls" ]; then
    # The suite does not verify certificates: a throwaway one will do.
    certs=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
      -subj /CN=localhost -keyout "$certs/key.pem" -out "$certs/cert.pem" 2>/dev/null ||
      die "--tls needs openssl"
    tls_args=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")
    scheme=wss
  fi
  "$bin" --listen "127.0.0.1:$port" --path / --app echo --admin-listen off --log-level warn \
    ${deflate:+--permessage-deflate} "${tls_args[@]}" &
  server=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || die "$bin exited at start"
    sleep 0.1
  done
  # Read at start: not needed once it listens.
  if [ -n "$tls" ]; then rm -rf "$certs"; fi
  url=$scheme://127.0.0.1:$port/
fi

# --- the run ------------------------------------------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.json "$out"/*.html
python3 - "$out/spec.json" "$url" "$cases" "$exclude" "$out" <<'EOF'
import json, sys
path, url, cases, exclude, out = sys.argv[1:]
ids = lambda s: [c.strip() for c in s.split(",") if c.strip()]
json.dump({"outdir": out, "servers": [{"agent": "wsgate", "url": url}],
           "cases": ids(cases), "exclude-cases": ids(exclude),
           "exclude-agent-cases": {}}, open(path, "w"), indent=2)
EOF
say "running the fuzzingclient against $url (cases $cases, excluded ${exclude:-none}); log: $out/wstest.log"
rc=0
(cd "$out" && timeout -k 10 "$budget" "$home/bin/python" "$wstest" -m fuzzingclient -s spec.json) \
  >"$out/wstest.log" 2>&1 || rc=$?
stop_server
[ "$rc" = 124 ] && say "the suite ran past --timeout ${budget}s and was stopped"

# --- the verdict --------------------------------------------------------------
python3 - "$out" "$rc" <<'EOF'
import json, os, sys
out, rc = sys.argv[1], sys.argv[2]
try:
    results = json.load(open(os.path.join(out, "index.json")))["wsgate"]
except (OSError, ValueError, KeyError):
    print("conformance: no results (suite exit status %s); see %s/wstest.log" % (rc, out))
    sys.exit(1)
passing = ("OK", "NON-STRICT", "INFORMATIONAL")
key = lambda c: [int(x) for x in c.split(".")]
failed = [(c, r) for c, r in sorted(results.items(), key=lambda i: key(i[0]))
          if r.get("behavior") not in passing]
print("conformance: %d cases, %d passed, %d failed; reports: %s/index.html"
      % (len(results), len(results) - len(failed), len(failed), out))
for case, r in failed:
    detail = {}
    try:
        detail = json.load(open(os.path.join(out, r.get("reportfile", ""))))
    except (OSError, ValueError):
        pass
    print("  %-8s %-13s close=%s %s" % (case, r.get("behavior"), r.get("behaviorClose"),
                                        " ".join(str(detail.get("result", "")).split())[:200]))
sys.exit(0 if results and not failed and rc == "0" else 1)
EOF
