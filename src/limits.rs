//! The process's file-descriptor budget (`RLIMIT_NOFILE`) and what it means
//! for connection capacity.
//!
//! Owns reading and raising the limit; it never assumes a value. On bare
//! metal systemd grants LimitNOFILE=1048576+; a developer box may allow 20,000.

/// Descriptors kept for listeners, wakers, epoll, logs and the admin side.
pub const RESERVED_FDS: u64 = 64;

/// Raises the soft descriptor limit to the hard limit and returns it.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// How many client connections a descriptor limit allows.
pub fn connection_capacity(nofile: u64, workers: usize) -> u64 {
    nofile.saturating_sub(RESERVED_FDS + 3 * workers as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_room_for_the_process() {
        assert_eq!(connection_capacity(20_000, 2), 20_000 - 64 - 6);
        assert_eq!(connection_capacity(10, 4), 0);
    }
}
