//! A deployment: every service of the pipeline as its own `parm` process, with its logs in
//! a folder, signals for fault injection (SIGSTOP, SIGKILL), restarts, and a teardown that
//! always runs (also when the owner panics).

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A signal a deployment sends its services (fault injection and teardown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGSTOP: freeze the process (a stalled worker).
    Stop,
    /// SIGCONT: let a stopped process run again.
    Cont,
    /// SIGTERM: ask for a clean shutdown.
    Term,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Term => libc::SIGTERM,
        }
    }
}

/// Sends `signal` to the process `pid`.
fn send_signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal.number()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One service process of a deployment.
pub struct Service {
    pub name: String,
    args: Vec<String>,
    child: Child,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub brokers: String,
    pub prefix: String,
    pub model_workers: usize,
    pub parity_workers: usize,
    pub decoders: usize,
    /// Extra flags for every service of a kind.
    pub encoder_args: Vec<String>,
    pub model_worker_args: Vec<String>,
    pub parity_worker_args: Vec<String>,
    pub decoder_args: Vec<String>,
    /// Extra flags for model worker number i only (e.g. an injected delay).
    pub per_model_worker_args: Vec<(usize, Vec<String>)>,
    /// Extra flags for parity worker number i only.
    pub per_parity_worker_args: Vec<(usize, Vec<String>)>,
    pub otlp_endpoint: Option<String>,
    /// Environment for every service, e.g. `PARM_DELIVERY=exactly-once` (the same
    /// delivery mode on every service of a deployment).
    pub service_env: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl DeploymentSpec {
    pub fn new(brokers: &str, prefix: &str, model_workers: usize, parity_workers: usize) -> Self {
        Self {
            brokers: brokers.to_string(),
            prefix: prefix.to_string(),
            model_workers,
            parity_workers,
            decoders: 1,
            encoder_args: vec![],
            model_worker_args: vec![],
            parity_worker_args: vec![],
            decoder_args: vec![],
            per_model_worker_args: vec![],
            per_parity_worker_args: vec![],
            otlp_endpoint: None,
            service_env: vec![],
            log_dir: std::env::temp_dir().join("parm-logs").join(prefix),
        }
    }
}

/// The running processes of a deployment. Dropping it stops them all.
pub struct Deployment {
    exe: PathBuf,
    pub spec: DeploymentSpec,
    pub services: Vec<Service>,
}

impl Deployment {
    /// Starts every service (`exe` is the `parm` binary).
    pub fn start(exe: &Path, spec: DeploymentSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.log_dir).with_context(|| format!("creating {}", spec.log_dir.display()))?;
        let mut d = Self { exe: exe.to_path_buf(), spec, services: Vec::new() };
        let s = d.spec.clone();
        d.spawn("encoder", "encoder", &s.encoder_args)?;
        d.spawn_workers("model", s.model_workers, &s.model_worker_args, &s.per_model_worker_args)?;
        d.spawn_workers("parity", s.parity_workers, &s.parity_worker_args, &s.per_parity_worker_args)?;
        for i in 0..s.decoders {
            d.spawn(&format!("decoder-{i}"), "decoder", &s.decoder_args)?;
        }
        Ok(d)
    }

    /// Starts `n` workers of a role (`model` or `parity`): worker i gets the role's flags,
    /// its id `ROLE-i`, and any flags meant for it alone.
    fn spawn_workers(&mut self, role: &str, n: usize, args: &[String], per_worker: &[(usize, Vec<String>)]) -> anyhow::Result<()> {
        for i in 0..n {
            let mut a = args.to_vec();
            a.extend(["--worker-id".to_string(), format!("{role}-{i}")]);
            if let Some((_, extra)) = per_worker.iter().find(|(w, _)| *w == i) {
                a.extend(extra.iter().cloned());
            }
            self.spawn(&format!("{role}-worker-{i}"), &format!("{role}-worker"), &a)?;
        }
        Ok(())
    }

    /// Starts one more service process. Each is a static group member
    /// (`--instance-id PREFIX-NAME`), so a restart takes its partitions back at once.
    pub fn spawn(&mut self, name: &str, subcommand: &str, extra: &[String]) -> anyhow::Result<()> {
        let mut args = vec![subcommand.to_string(), "--instance-id".to_string(), instance_id(&self.spec.prefix, name)];
        args.extend(extra.iter().cloned());
        let child = self.command(name, &args)?.spawn().with_context(|| format!("starting {name}"))?;
        self.services.push(Service { name: name.to_string(), args, child });
        Ok(())
    }

    fn command(&self, name: &str, args: &[String]) -> anyhow::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.log_dir.join(format!("{name}.log")))?;
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("PARM_BROKERS", &self.spec.brokers)
            .env("PARM_TOPIC_PREFIX", &self.spec.prefix)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(e) = &self.spec.otlp_endpoint {
            c.env("PARM_OTLP_ENDPOINT", e);
        }
        c.envs(self.spec.service_env.iter().map(|(k, v)| (k, v)));
        Ok(c)
    }

    fn find(&mut self, name: &str) -> anyhow::Result<&mut Service> {
        self.services.iter_mut().find(|s| s.name == name).with_context(|| format!("no service named {name}"))
    }

    /// Sends `signal` to a service (SIGKILL is [`Deployment::kill`], which also reaps it).
    pub fn signal(&mut self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let pid = self.find(name)?.child.id();
        send_signal(pid, signal).with_context(|| format!("sending {signal:?} to {name} (pid {pid})"))
    }

    /// Kills a service with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let s = self.find(name)?;
        s.child.kill()?;
        s.child.wait()?;
        Ok(())
    }

    /// Starts a killed service again with the same arguments.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let args = self.find(name)?.args.clone();
        let child = self.command(name, &args)?.spawn()?;
        self.find(name)?.child = child;
        Ok(())
    }

    /// The name and pid of every service process that is running now.
    pub fn pids(&mut self) -> Vec<(String, u32)> {
        self.services.iter_mut().filter_map(|s| s.child.try_wait().ok().flatten().is_none().then(|| (s.name.clone(), s.child.id()))).collect()
    }

    /// Fails if any service has exited (with its log's tail).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in &mut self.services {
            if let Some(status) = s.child.try_wait()? {
                let log = std::fs::read_to_string(self.spec.log_dir.join(format!("{}.log", s.name))).unwrap_or_default();
                let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                bail!("{} exited with {status}:\n{tail}", s.name);
            }
        }
        Ok(())
    }

    /// The consumer groups of this deployment and the members each should have: every
    /// service is a static member, named by its instance id (a kind with no process, e.g.
    /// no parity workers, has no group).
    pub fn expected_groups(&self) -> Vec<(String, Vec<String>)> {
        let p = &self.spec.prefix;
        let members = |kind: &str| -> Vec<String> {
            self.services.iter().filter(|s| s.args.first().is_some_and(|a| a == kind)).map(|s| instance_id(p, &s.name)).collect()
        };
        vec![
            (format!("{p}-encoder"), members("encoder")),
            (format!("{p}-model-workers"), members("model-worker")),
            (format!("{p}-parity-workers"), members("parity-worker")),
            (format!("{p}-decoder"), members("decoder")),
        ]
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .collect()
    }

    /// Waits until every consumer group of the deployment is stable with exactly its live
    /// processes as members (not a killed one the broker has not noticed yet), so that
    /// queries sent from now on meet no rebalance.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let groups = self.expected_groups();
            // A broker that just started may not answer group listings yet: not ready.
            let not_ready = groups_ready(&self.spec.brokers, &groups).unwrap_or_else(|e| vec![format!("listing the groups failed: {e:#}")]);
            if not_ready.is_empty() {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("services not ready after {timeout:?}: {not_ready:?} (logs in {})", self.spec.log_dir.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops every service: SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        for s in &mut self.services {
            if s.child.try_wait().ok().flatten().is_none() {
                let _ = send_signal(s.child.id(), Signal::Cont);
                let _ = send_signal(s.child.id(), Signal::Term);
            }
        }
        let until = Instant::now() + Duration::from_secs(10);
        for s in &mut self.services {
            while s.child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The static-membership id of the service `name` of the deployment `prefix`.
pub fn instance_id(prefix: &str, name: &str) -> String {
    format!("{prefix}-{name}")
}

/// The groups that are not yet stable with exactly the expected members, with what they
/// look like now. A member is named as the broker made its member id, `NAME-UUID`: NAME is
/// the instance id of a static member (`--instance-id`; a killed static member the broker
/// has not dropped yet has it too, but then its process is not running), else the client
/// id, `parm-PID`.
pub fn groups_ready(brokers: &str, expected: &[(String, Vec<String>)]) -> anyhow::Result<Vec<String>> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let mut not_ready = Vec::new();
    for (group, want) in expected {
        let list = client.fetch_group_list(Some(group), Duration::from_secs(5))?;
        let (state, mut members) = list.groups().first().map_or(("missing".to_string(), vec![]), |g| {
            (g.state().to_string(), g.members().iter().map(|m| member_name(m.id()).to_string()).collect::<Vec<_>>())
        });
        let mut want = want.clone();
        members.sort();
        want.sort();
        if state != "Stable" || members != want {
            not_ready.push(format!("{group}: {state} with members {members:?}, want {want:?}"));
        }
    }
    Ok(not_ready)
}

/// A member id without the `-UUID` the broker appended (36 characters and a dash).
fn member_name(id: &str) -> &str {
    const SUFFIX: usize = 37;
    match id.len().checked_sub(SUFFIX) {
        Some(cut) if id.as_bytes().get(cut) == Some(&b'-') => id.get(..cut).unwrap_or(id),
        _ => id,
    }
}
