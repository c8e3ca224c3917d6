#!/usr/bin/env bash
# Checks this machine against a target number of concurrent WebSocket
# connections and prints every shortfall with the fix. Exits 0 when the
# target is reachable, 1 when it is not, 2 on bad usage.
#
#   tuning/tune.sh [--target N] [--both-ends] [--apply]
#
#   --target N    connections to hold (default 1000000)
#   --both-ends   the load generator runs on this machine too (loopback
#                 benchmarks): kernel sockets, descriptors and conntrack
#                 entries double
#   --apply       apply ../sysctl.conf first (root), then check
#
# Per-process descriptor limits are checked for this shell (`ulimit -n`),
# which is what a wsgate started from it gets; under systemd, LimitNOFILE=
# in tuning/wsgate.service sets it instead.
set -uo pipefail

target=1000000
ends=1
apply=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a number}; shift 2 ;;
    --both-ends) ends=2; shift ;;
    --apply) apply=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "tune.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$target" in ''|*[!0-9]*) echo "tune.sh: --target must be a number" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
if [ "$apply" = 1 ]; then
  sysctl -e -q -p "$here/../sysctl.conf" || echo "tune.sh: some settings could not be applied (not root?)" >&2
fi

short=0
report() { # status name have need fix
  printf '%-6s %-34s have %-14s need %-14s %s\n' "$1" "$2" "$3" "$4" "$5"
  [ "$1" = SHORT ] && short=1
}
check_min() { # name have need fix
  if [ "$2" -ge "$3" ] 2>/dev/null; then report OK "$1" "$2" "$3" ""; else report SHORT "$1" "$2" "$3" "$4"; fi
}
sysval() { sysctl -n "$1" 2>/dev/null | awk '{print $NF}'; }

sockets=$(( target * ends ))
fds_per_process=$(( target + 1024 ))

echo "target: $target connections ($ends end(s) on this machine: $sockets sockets)"
soft=$(ulimit -Sn); hard=$(ulimit -Hn)
[ "$soft" = unlimited ] && soft=$fds_per_process
[ "$hard" = unlimited ] && hard=$fds_per_process
# wsgate raises its soft limit to the hard limit itself.
check_min "RLIMIT_NOFILE (hard, per process)" "$hard" "$fds_per_process" \
  "raise LimitNOFILE= (systemd) or ulimit -Hn; a process here can hold $(( hard > 1024 ? hard - 1024 : 0 )) connections — or run several processes on one port (README: one-box cluster)"
check_min "fs.nr_open" "$(sysval fs.nr_open)" "$fds_per_process" "sysctl -w fs.nr_open=2097152"
check_min "fs.file-max" "$(sysval fs.file-max)" "$(( sockets + 65536 ))" "sysctl -w fs.file-max=4194304"
backlog_need=1024; [ "$target" -ge 100000 ] && backlog_need=65535
check_min "net.core.somaxconn" "$(sysval net.core.somaxconn)" "$backlog_need" "sysctl -w net.core.somaxconn=65535"
check_min "net.ipv4.tcp_max_syn_backlog" "$(sysval net.ipv4.tcp_max_syn_backlog)" "$backlog_need" "sysctl -w net.ipv4.tcp_max_syn_backlog=65535"
# tcp_mem is in pages; budget one page per socket for bursts.
check_min "net.ipv4.tcp_mem (high, pages)" "$(sysval net.ipv4.tcp_mem)" "$sockets" "see sysctl.conf (tcp_mem)"
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
  check_min "net.netfilter.nf_conntrack_max" "$(sysval net.netfilter.nf_conntrack_max)" "$(( sockets + 65536 ))" \
    "sysctl -w net.netfilter.nf_conntrack_max=2621440 (or leave loopback untracked)"
else
  report OK "nf_conntrack" "not loaded" "-" ""
fi
# Memory: ~8 KiB of kernel socket structures per loopback connection (both
# ends, /proc/slabinfo) i.e. ~4 KiB per socket, plus ≤256 B of wsgate per
# connection, plus the client's own memory when it shares the machine.
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
need_kib=$(( sockets * 4 + target / 4 + (ends - 1) * target / 2 ))
check_min "MemAvailable (KiB)" "$avail_kib" "$need_kib" "more RAM, or spread connections over machines"
# Client side: ports per (source IP, destination) pair.
read -r lo hi < <(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr '\t' ' ')
ports=$(( hi - lo + 1 ))
# The quarter-of-the-ports rule for source addresses, explained in sysctl.conf.
ips=$(( (target * 4 + ports - 1) / ports ))
report INFO "ephemeral ports per source IP" "$ports" "-" "a client should use $ips source address(es) for $target connections (wsbench --src-ips), each under a quarter of its ports"
mig=$(sysval net.ipv4.tcp_migrate_req)
if [ "${mig:-0}" = 1 ]; then report OK "net.ipv4.tcp_migrate_req" 1 1 ""; else
  report WARN "net.ipv4.tcp_migrate_req" "${mig:-absent}" 1 "zero-downtime restarts may reset queued connects"; fi

if [ "$short" = 1 ]; then
  echo "tune.sh: target $target is NOT reachable on this machine as configured (see SHORT lines)"
  exit 1
fi
echo "tune.sh: target $target is reachable"
exit 0
