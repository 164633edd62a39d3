//! Linux process facts read from `/proc`, and signals to process groups.
//!
//! A server is identified by its pid *and* its start time (field 22 of `/proc/<pid>/stat`, clock
//! ticks since boot), so that a pid reused by another process after a reboot or a long downtime
//! is never mistaken for the server, nor signalled.

use std::io;

/// What `/proc/<pid>/stat` says about one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Running or able to run: not a zombie waiting to be reaped, not dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let _ppid = fields.next()?; // field 4
    let pgrp = fields.next()?.parse().ok()?; // field 5
    let start_time = fields.nth(22 - 6)?.parse().ok()?; // field 22 (next is field 6)
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

/// The stat of process `pid`, or `None` when there is no such process.
pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The machine's boot id (changes at every boot), when the kernel exposes it.
pub(crate) fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The process that a handle's `(pid, start_time)` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leader {
    /// The very process, alive.
    Alive,
    /// It exited (gone, or a zombie not yet reaped).
    Exited,
    /// The pid now belongs to another process.
    Reused,
}

/// Whether process `pid` started at `start_time` is still alive.
pub(crate) fn leader(pid: u32, start_time: u64) -> Leader {
    match read_stat(pid) {
        None => Leader::Exited,
        Some(stat) if stat.start_time != start_time => Leader::Reused,
        Some(stat) if stat.is_live() => Leader::Alive,
        Some(_) => Leader::Exited,
    }
}

/// The live (non-zombie) processes of process group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| read_stat(pid).is_some_and(|s| s.pgrp == pgid && s.is_live()))
        .collect()
}

/// Sends `signal` to process group `pgid`, unless the group's leader pid now belongs to another
/// process (pid reuse: then the group is not ours). A group that no longer exists is fine.
///
/// A pid stays reserved while a process group of that number exists, so when the leader has
/// exited, the members still in group `pgid` are the server's leftovers.
pub(crate) fn signal_group(pgid: i32, leader_start_time: u64, signal: i32) -> io::Result<()> {
    if pgid <= 1 || pgid == own_group() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    if leader(pgid as u32, leader_start_time) == Leader::Reused {
        return Ok(());
    }
    // SAFETY: killpg only sends a signal; pgid > 1 and is not our own group, so neither the
    // caller's group (0) nor every process (-1) can be hit.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// This process's own process group.
fn own_group() -> i32 {
    // SAFETY: getpgrp takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::getpgrp() }
}

/// Whether this process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_tricky_command_names() {
        let text = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654,
            })
        );
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(parse_stat("12 (x) S 1 12"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_own_stat() {
        let stat = read_stat(std::process::id()).expect("own /proc stat");
        assert!(stat.is_live());
        assert_eq!(stat.pgrp, own_group());
        assert_eq!(leader(std::process::id(), stat.start_time), Leader::Alive);
        assert_eq!(
            leader(std::process::id(), stat.start_time + 1),
            Leader::Reused
        );
    }

    #[test]
    fn refuses_to_signal_own_or_special_groups() {
        assert!(signal_group(0, 0, 0).is_err());
        assert!(signal_group(1, 0, 0).is_err());
        assert!(signal_group(-5, 0, 0).is_err());
        assert!(signal_group(own_group(), 0, 0).is_err());
    }
}
