//! Whether memory stays bounded: each process's resident set (VmRSS in
//! `/proc/PID/status`) sampled through a run, with its first, largest and last value.

use serde::Serialize;
use std::time::{Duration, Instant};

/// One process's resident memory over a run (MiB).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMemory {
    pub name: String,
    pub first_mib: f64,
    pub max_mib: f64,
    pub last_mib: f64,
}

/// Samples the resident memory of a set of processes at most once per period.
pub struct MemorySampler {
    every: Duration,
    last: Option<Instant>,
    processes: Vec<(String, u32, Option<ProcessMemory>)>,
}

impl MemorySampler {
    pub fn new(processes: Vec<(String, u32)>, every: Duration) -> Self {
        Self { every, last: None, processes: processes.into_iter().map(|(n, p)| (n, p, None)).collect() }
    }

    /// Takes a sample unless the last one is younger than the period.
    pub fn sample(&mut self) {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            return;
        }
        self.last = Some(now);
        for (name, pid, seen) in &mut self.processes {
            let Some(mib) = resident_mib(*pid) else { continue };
            let m = seen.get_or_insert_with(|| ProcessMemory { name: name.clone(), first_mib: mib, max_mib: mib, last_mib: mib });
            m.max_mib = m.max_mib.max(mib);
            m.last_mib = mib;
        }
    }

    /// What was seen of each process sampled at least once.
    pub fn report(&self) -> Vec<ProcessMemory> {
        self.processes.iter().filter_map(|(_, _, m)| m.clone()).collect()
    }
}

/// VmRSS of `pid` in MiB.
fn resident_mib(pid: u32) -> Option<f64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?).map(|kib| kib as f64 / 1024.0)
}

/// The `VmRSS:   1234 kB` line of `/proc/PID/status`, in KiB.
fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_the_status_text() {
        assert_eq!(parse_vm_rss_kib("Name:\tparm\nVmPeak:\t  900 kB\nVmRSS:\t   86512 kB\n"), Some(86512));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_sampled() {
        let mut m = MemorySampler::new(vec![("client".into(), std::process::id())], Duration::from_secs(3600));
        m.sample();
        let r = m.report();
        assert_eq!(r.len(), 1);
        assert!(r[0].first_mib > 0.0 && r[0].max_mib >= r[0].first_mib, "{r:?}");
    }
}
