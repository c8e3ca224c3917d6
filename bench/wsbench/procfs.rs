//! What the benchmark reads from /proc about the server and the kernel:
//! resident memory and CPU time of server processes, and kernel TCP memory.
//!
//! Pure parsers over the file text (unit-tested on samples) plus thin readers.

use std::time::Duration;

/// VmRSS in bytes from the text of /proc/PID/status.
pub fn parse_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) is index 11, stime (15) index 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// TCP memory in pages ("mem N" of the TCP line) from /proc/net/sockstat.
pub fn parse_tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Sockets in use ("inuse N" of the TCP line).
pub fn parse_tcp_inuse(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "inuse" {
            return it.next()?.parse().ok();
        }
    }
    None
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Summed RSS (bytes) of the given processes.
pub fn rss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| parse_rss(&s))
        .sum()
}

/// Summed CPU time of the given processes.
pub fn cpu(pids: &[u32]) -> Duration {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| parse_cpu_ticks(&s))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// Kernel TCP buffer memory in bytes and sockets in use.
pub fn tcp_mem() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    (
        parse_tcp_mem_pages(&s).unwrap_or(0) * page_size(),
        parse_tcp_inuse(&s).unwrap_or(0),
    )
}

/// Slab memory (bytes) of the kernel caches that hold TCP sockets.
pub fn socket_slab_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/slabinfo") else {
        return 0;
    };
    parse_socket_slabs(&s)
}

/// Sums active_objs × objsize of socket-related slab caches.
pub fn parse_socket_slabs(slabinfo: &str) -> u64 {
    const CACHES: [&str; 6] = [
        "TCP",
        "tcp_bind_bucket",
        "sock_inode_cache",
        "dentry",
        "filp",
        "eventpoll_epi",
    ];
    slabinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && CACHES.contains(&f[0]))
                .then(|| f[1].parse::<u64>().unwrap_or(0) * f[3].parse::<u64>().unwrap_or(0))
        })
        .sum()
}

/// MemTotal − MemAvailable from /proc/meminfo, in bytes: what the whole box
/// uses (kernel, server and load generator together).
pub fn parse_mem_used(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

pub fn box_mem_used() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_used(&s))
        .unwrap_or(0)
}

/// This process's own CPU time (user + system).
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_stat_and_sockstat() {
        let status = "Name:\twsgate\nVmPeak:\t  100 kB\nVmRSS:\t   15000 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(15_000 * 1024));
        let stat = "1234 (ws gate) S 1 1234 1234 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 4 0 100 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        let sockstat = "sockets: used 300\nTCP: inuse 30012 orphan 0 tw 5 alloc 30020 mem 61\nUDP: inuse 2 mem 1\n";
        assert_eq!(parse_tcp_mem_pages(sockstat), Some(61));
        assert_eq!(parse_tcp_inuse(sockstat), Some(30012));
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\nTCP 100 110 2432 13 8\nfilp 50 60 256 16 1\nkmalloc-64 9 9 64 1 1\n";
        assert_eq!(parse_socket_slabs(slab), 100 * 2432 + 50 * 256);
        let meminfo =
            "MemTotal:       24683628 kB\nMemFree:        1000 kB\nMemAvailable:   20683628 kB\n";
        assert_eq!(parse_mem_used(meminfo), Some(4_000_000 * 1024));
    }
}
