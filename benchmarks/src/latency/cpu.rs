//! Where the CPU goes: each process's CPU time (user + system, from `/proc/PID/stat`)
//! over the part of a run that sends load, and per query.

use serde::Serialize;

/// One process's CPU over a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// `broker`, `client` (the load generator, this process) or the service's name.
    pub name: String,
    /// CPU seconds used.
    pub cpu_s: f64,
    /// CPU microseconds per query sent.
    pub per_query_us: f64,
}

/// The processes to watch and their CPU time when the meter started.
pub struct CpuMeter {
    start: Vec<(String, u32, u64)>,
}

impl CpuMeter {
    /// Starts measuring `processes` (name, pid); a process that cannot be read is left out.
    pub fn start(processes: Vec<(String, u32)>) -> Self {
        Self { start: processes.into_iter().filter_map(|(name, pid)| cpu_ticks(pid).map(|t| (name, pid, t))).collect() }
    }

    /// CPU used since the start by each process still readable, per query of `queries`.
    pub fn stop(&self, queries: usize) -> Vec<ProcessCpu> {
        let tick_s = 1.0 / clock_ticks_per_second();
        self.start
            .iter()
            .filter_map(|(name, pid, t0)| {
                let cpu_s = cpu_ticks(*pid)?.saturating_sub(*t0) as f64 * tick_s;
                Some(ProcessCpu { name: name.clone(), cpu_s, per_query_us: cpu_s * 1e6 / queries.max(1) as f64 })
            })
            .collect()
    }
}

/// utime + stime of `pid` in clock ticks, all its threads together.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis: utime and
/// stime are fields 14 and 15, the 12th and 13th after it.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The pid of the local broker that `scripts/kafka-local` runs, if it runs.
pub fn local_broker_pid() -> Option<u32> {
    let out = std::process::Command::new("bash").arg(parm::broker::kafka_local_script()).arg("status").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = &text[text.find("pid ")? + 4..];
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (rdk:broker (1) x) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 12 0";
        assert_eq!(parse_stat_ticks(stat), Some(290));
        assert_eq!(parse_stat_ticks("4242 (short) S 1 2"), None);
    }

    #[test]
    fn this_process_uses_cpu_while_it_spins() {
        let meter = CpuMeter::start(vec![("client".into(), std::process::id())]);
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = meter.stop(100);
        assert_eq!(used.len(), 1);
        assert!(used[0].cpu_s > 0.0, "200 ms of spinning used no CPU: {used:?}");
        assert!((used[0].per_query_us - used[0].cpu_s * 1e4).abs() < 1e-6);
    }
}
