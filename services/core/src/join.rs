//! The decoder's state machine: joins a coding group's manifest, member predictions and
//! parity predictions, and decides for every query exactly once what to answer.
//!
//! A group has r parities (r = 1: the paper's one addition parity, decoded by
//! subtraction; r > 1: the code of [`crate::multi_parity::LinearCode`], which recovers any
//! r or fewer missing members from as many parity outputs).
//!
//! It is driven from outside, quinn-proto style: the I/O layer hands it messages with
//! [`Join::on_manifest`], [`Join::on_prediction`] and [`Join::on_parity`], calls
//! [`Join::handle_timeout`] when [`Join::next_timeout`] is due, and drains what it decided
//! with [`Join::poll_event`]. Time is always an argument (milliseconds since the epoch).
//!
//! Decisions made on arrival never depend on the clock: a real prediction is answered at
//! once (even before its group's manifest: the encoder sends members as they come and the
//! manifest when the group closes), and under [`Policy::Eager`] a reconstruction is
//! answered as soon as it is possible. Every decision that waits for a deadline happens in `handle_timeout`, so a
//! restarted decoder can replay its inputs first and only then let time act.
//!
//! Memory is bounded: a group is dropped once every member is answered and every
//! prediction is in, or at its last hard deadline plus `late_linger_ms`; predictions that
//! arrive before their manifest wait at most until their own hard deadline plus that
//! linger. And the count is capped: past `max_groups`, the group due first is settled
//! early ([`Event::Evicted`]).
//!
//! A group id names the group's first input offset. An encoder that crashed and replayed
//! may close the same group with other members; a manifest that disagrees with the one
//! already seen adds its new members, and the group is then never reconstructed (its
//! parity may encode either version): its queries get real predictions or `Unavailable`.
//!
//! Why one long file: it is one state machine, and its transitions (a manifest, a
//! prediction, a parity output, a timer, an eviction) keep shared invariants (one answer
//! per query, bounded memory, offsets held by open groups) that are checked more easily in
//! one place. Its tests are in `join/tests.rs`.

use crate::decode::reconstruct;
use crate::multi_parity::LinearCode;
use crate::offsets::{OffsetTracker, Origin};
use crate::top1;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;

/// When the decoder may answer with a reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The paper's: reconstruct as soon as the parity and the k−1 others are in (with r
    /// parities: as soon as as many parity outputs are in as members are missing).
    Eager,
    /// Wait for the real prediction until the query's deadline, then reconstruct.
    Deadline,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Eager => "eager",
            Policy::Deadline => "deadline",
        })
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eager" => Ok(Policy::Eager),
            "deadline" => Ok(Policy::Deadline),
            other => Err(format!("unknown decoder policy '{other}': use 'deadline' or 'eager'")),
        }
    }
}

/// Settings of the join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub policy: Policy,
    /// Treat a model partition whose prediction missed a deadline as lagging: its other
    /// pending members are reconstructed as soon as possible, not one deadline at a time.
    pub lag_awareness: bool,
    /// How long after a group's last hard deadline late predictions are still compared.
    pub late_linger_ms: u64,
    /// The most groups held at once (open, waiting for a manifest, or finished and
    /// remembered). Past it, the group due first is settled at once, see
    /// [`Event::Evicted`].
    pub max_groups: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self { policy: Policy::Deadline, lag_awareness: true, late_linger_ms: 2_000, max_groups: 1_000_000 }
    }
}

/// One query of a group, as the encoder's manifest describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec<M = ()> {
    pub query_id: String,
    pub index: u32,
    pub model_partition: i32,
    /// Under [`Policy::Deadline`], reconstruct once this passes.
    pub deadline_at: u64,
    /// Answer `Unavailable` once this passes without any answer.
    pub hard_deadline_at: u64,
    /// The caller's own data about the query (timings, trace context), handed back with
    /// its answer.
    pub meta: M,
}

/// A real prediction, with what the join needs to answer it even before the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival<M = ()> {
    pub query_id: String,
    pub index: u32,
    pub model_partition: i32,
    pub output: Vec<f32>,
    pub deadline_at: u64,
    pub hard_deadline_at: u64,
    pub meta: M,
}

/// A coding group: its id and members, and whether parity queries were sent for it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec<M = ()> {
    pub group_id: String,
    pub members: Vec<MemberSpec<M>>,
    /// False for a deployment without parity (the benchmark's baselines): no parity
    /// prediction will come, so the group is finished as soon as every member is
    /// answered and in, and it is never reconstructed.
    pub has_parity: bool,
    /// The code's k (members of a full group; a partial group has fewer, the rest zero).
    pub k: u32,
    /// How many parity queries were sent (r): parity j encodes Σ_i w_ji X_i of
    /// [`LinearCode`] (r = 1: the plain sum).
    pub parities: u32,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Model,
    Reconstructed,
    Unavailable,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Model => "MODEL",
            Source::Reconstructed => "RECONSTRUCTED",
            Source::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The one answer for one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission<M = ()> {
    pub group_id: String,
    pub query_id: String,
    pub index: u32,
    pub source: Source,
    /// Empty for `Unavailable`.
    pub output: Vec<f32>,
    pub at: u64,
    pub meta: M,
}

/// What the join decided or noticed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<M = ()> {
    /// Send this result.
    Result(Emission<M>),
    /// A real prediction arrived after its query was answered otherwise. `agreed` compares
    /// its top-1 with the reconstruction's (`None` when the answer was `Unavailable`).
    Late { group_id: String, query_id: String, agreed: Option<bool>, late_by_ms: u64 },
    /// A model partition started lagging (a prediction from it missed its deadline).
    Lagging { model_partition: i32 },
    /// Inputs that no manifest claimed before they expired were dropped.
    Expired { group_id: String, inputs: usize },
    /// The join held `max_groups` groups, so this one, the one due first, was settled
    /// early: each unanswered member got what its hard deadline would have given it (a
    /// reconstruction if possible, else `Unavailable`), and the group was forgotten. An
    /// input of it that comes later is taken as a new group's.
    Evicted { group_id: String },
}

/// One member query of a group: what the manifest says of it, its real prediction once
/// in, and how it was answered (the source, and the top-1 class given).
#[derive(Debug)]
struct Member<M> {
    spec: MemberSpec<M>,
    output: Option<Vec<f32>>,
    answered: Option<(Source, Option<usize>)>,
}

/// An open group: its members, the parity outputs once in, and what rules out decoding.
#[derive(Debug)]
struct Group<M> {
    members: Vec<Member<M>>,
    /// Parity j's output once in (r slots; none without parity).
    parities: Vec<Option<Vec<f32>>>,
    /// The code that decodes r > 1 parities (r = 1 decodes by subtraction).
    code: Option<LinearCode>,
    /// Two manifests disagreed (an encoder replay regrouped): never reconstruct.
    conflicted: bool,
    /// No parity query was sent for this group: none is waited for.
    no_parity: bool,
    /// Predictions for indexes this grouping does not list, before or after its manifest
    /// (index, output, answered on arrival). A replayed manifest that regroups with more
    /// members claims them, so that a query answered on arrival is not answered again.
    stray: Vec<(u32, Vec<f32>, bool)>,
}

impl<M> Group<M> {
    /// Whether parity outputs can decode this group: they were sent, and for this very
    /// grouping.
    fn decodable(&self) -> bool {
        !self.conflicted && !self.no_parity
    }

    /// Whether every parity output that was sent is in.
    fn parities_in(&self) -> bool {
        self.parities.iter().all(Option::is_some)
    }
}

/// Predictions that arrived before their manifest; the real ones are already answered.
#[derive(Debug)]
struct Waiting {
    outputs: Vec<(u32, Vec<f32>)>,
    /// Indexes already answered from their own prediction.
    answered: Vec<u32>,
    /// Parity outputs: (parity index, number of members it encodes, output).
    parities: Vec<(u32, u32, Vec<f32>)>,
    expires_at: u64,
}

impl Waiting {
    fn new(expires_at: u64) -> Self {
        Self { outputs: Vec::new(), answered: Vec::new(), parities: Vec::new(), expires_at }
    }
}

/// Where a group is in its life: open (its manifest is in), waiting for its manifest
/// (predictions came first), or done.
#[derive(Debug)]
enum State<M> {
    Open(Group<M>),
    Waiting(Waiting),
    /// Finished early (everything answered and in); remembered until its last hard
    /// deadline plus the late linger so that a replayed duplicate is not answered again.
    /// `answered`: the member indexes that got their answer; a replayed encoder that
    /// regrouped may bring others, and those are new queries.
    Done { until: u64, answered: Vec<u32> },
}

/// One group's place in the join: its state, the inputs it holds, its timer, and the
/// decoder partition its inputs come from (all of a group's inputs share it).
#[derive(Debug)]
struct Entry<M> {
    state: State<M>,
    origins: Vec<Origin>,
    timer: Option<u64>,
    partition: i32,
    /// When the join first heard of the group.
    since: u64,
}

/// The per-group join of one decoder instance. See the module docs.
#[derive(Debug)]
pub struct Join<M = ()> {
    config: JoinConfig,
    entries: HashMap<String, Entry<M>>,
    timers: BTreeSet<(u64, String)>,
    lagging: HashSet<i32>,
    offsets: OffsetTracker,
    events: VecDeque<Event<M>>,
}

impl<M: Clone> Join<M> {
    pub fn new(config: JoinConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            lagging: HashSet::new(),
            offsets: OffsetTracker::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &JoinConfig {
        &self.config
    }

    /// A group's manifest arrived.
    pub fn on_manifest(&mut self, spec: GroupSpec<M>, origin: Origin, now: u64) {
        match self.entries.get_mut(&spec.group_id) {
            Some(Entry { state: State::Done { answered, .. }, .. }) if spec.members.iter().all(|m| answered.contains(&m.index)) => {
                self.offsets.observe(origin); // a replayed duplicate
                return;
            }
            Some(entry @ Entry { state: State::Done { .. }, .. }) => {
                // A replayed encoder closed this group again with members it did not have
                // (a partial group the crash cut short): those are queries of their own.
                // The group reopens, conflicted (never reconstructed), with the members
                // answered before marked so.
                let answered = match &mut entry.state {
                    State::Done { answered, .. } => std::mem::take(answered),
                    _ => Vec::new(),
                };
                let mut g = new_group(&spec);
                g.conflicted = true;
                for m in g.members.iter_mut().filter(|m| answered.contains(&m.spec.index)) {
                    m.answered = Some((Source::Model, None));
                }
                entry.state = State::Open(g);
                entry.origins.push(origin);
            }
            Some(Entry { state: State::Open(g), origins, .. }) => {
                let known: HashSet<u32> = g.members.iter().map(|m| m.spec.index).collect();
                let same = spec.members.len() == g.members.len() && spec.members.iter().all(|m| known.contains(&m.index));
                if same {
                    self.offsets.observe(origin); // a replayed duplicate
                    return;
                }
                g.conflicted = true;
                for m in spec.members.iter().filter(|m| !known.contains(&m.index)) {
                    let (output, answered) = match g.stray.iter().position(|s| s.0 == m.index) {
                        Some(at) => {
                            let (_, out, on_arrival) = g.stray.swap_remove(at);
                            let answered = on_arrival.then(|| (Source::Model, top1(&out)));
                            (Some(out), answered)
                        }
                        None => (None, None),
                    };
                    g.members.push(Member { spec: m.clone(), output, answered });
                }
                origins.push(origin);
            }
            Some(entry) => {
                let State::Waiting(w) = std::mem::replace(&mut entry.state, State::Open(new_group(&spec))) else {
                    unreachable!("matched above")
                };
                entry.origins.push(origin);
                if let State::Open(g) = &mut entry.state {
                    let members = g.members.len();
                    for (j, n, out) in w.parities {
                        if n as usize == members && g.decodable() {
                            if let Some(slot @ None) = g.parities.get_mut(j as usize) {
                                *slot = Some(out);
                            }
                        }
                    }
                    for (index, out) in w.outputs {
                        let on_arrival = w.answered.contains(&index);
                        if let Some(m) = g.members.iter_mut().find(|m| m.spec.index == index) {
                            if on_arrival {
                                // Answered on arrival, before the manifest.
                                m.answered = Some((Source::Model, top1(&out)));
                            }
                            m.output = Some(out);
                        } else {
                            g.stray.push((index, out, on_arrival));
                        }
                    }
                }
            }
            None => {
                let entry = Entry { state: State::Open(new_group(&spec)), origins: vec![origin], timer: None, partition: origin.partition, since: now };
                self.entries.insert(spec.group_id.clone(), entry);
            }
        }
        self.offsets.hold(origin);
        self.advance(&spec.group_id, now, false);
        self.enforce_cap(&spec.group_id, now);
    }

    /// A real prediction arrived. It is answered at once if its query has no answer yet,
    /// with or without the group's manifest.
    pub fn on_prediction(&mut self, group_id: &str, p: Arrival<M>, origin: Origin, now: u64) {
        let late_linger = self.config.late_linger_ms;
        let entry = self
            .entries
            .entry(group_id.to_string())
            .or_insert_with(|| Entry { state: State::Waiting(Waiting::new(p.hard_deadline_at.saturating_add(late_linger))), origins: Vec::new(), timer: None, partition: origin.partition, since: now });
        if now < p.deadline_at {
            self.lagging.remove(&p.model_partition);
        }
        match &mut entry.state {
            State::Done { answered, .. } if answered.contains(&p.index) => {
                self.offsets.observe(origin); // a replayed duplicate of a finished group
                return;
            }
            State::Done { answered, .. } => {
                // A member the finished group did not have (see on_manifest): answered on
                // its own, as before a manifest; a straggling manifest then finds it done.
                if now < p.hard_deadline_at {
                    answered.push(p.index);
                    self.events.push_back(arrival_result(group_id, &p, now));
                }
                self.offsets.observe(origin);
                return;
            }
            State::Waiting(w) if now >= p.hard_deadline_at => {
                // Too late to answer on its own: its query was answered at its hard
                // deadline, or will be by the manifest it waits for.
                if w.outputs.iter().any(|(i, _)| *i == p.index) {
                    self.offsets.observe(origin);
                    return;
                }
                w.outputs.push((p.index, p.output));
            }
            State::Waiting(w) => {
                if w.outputs.iter().any(|(i, _)| *i == p.index) {
                    self.offsets.observe(origin); // a duplicate
                    return;
                }
                w.answered.push(p.index);
                self.events.push_back(arrival_result(group_id, &p, now));
                w.outputs.push((p.index, p.output));
                w.expires_at = w.expires_at.max(p.hard_deadline_at.saturating_add(late_linger));
            }
            State::Open(g) => {
                let Some(m) = g.members.iter_mut().find(|m| m.spec.index == p.index) else {
                    // Not a member of this grouping: a query of its own that a regrouping
                    // manifest may still list (see `Group::stray`). Answered on its own, as
                    // before a manifest and after the group is done.
                    if g.stray.iter().any(|s| s.0 == p.index) {
                        self.offsets.observe(origin); // a duplicate
                        return;
                    }
                    let on_arrival = now < p.hard_deadline_at;
                    if on_arrival {
                        self.events.push_back(arrival_result(group_id, &p, now));
                    }
                    g.stray.push((p.index, p.output, on_arrival));
                    entry.origins.push(origin);
                    self.offsets.hold(origin);
                    return;
                };
                if m.output.is_some() {
                    self.offsets.observe(origin); // a duplicate
                    return;
                }
                if let Some((source, recon_top1)) = m.answered {
                    let agreed = (source == Source::Reconstructed).then(|| top1(&p.output) == recon_top1);
                    self.events.push_back(Event::Late {
                        group_id: group_id.to_string(),
                        query_id: m.spec.query_id.clone(),
                        agreed,
                        late_by_ms: now.saturating_sub(m.spec.deadline_at),
                    });
                }
                m.output = Some(p.output);
            }
        }
        entry.origins.push(origin);
        self.offsets.hold(origin);
        self.advance(group_id, now, false);
        self.enforce_cap(group_id, now);
    }

    /// Parity `parity_index` of a group arrived; `members` is how many queries it encodes.
    #[allow(clippy::too_many_arguments)]
    pub fn on_parity(&mut self, group_id: &str, parity_index: u32, members: u32, output: Vec<f32>, hard_deadline_at: u64, origin: Origin, now: u64) {
        let late_linger = self.config.late_linger_ms;
        let entry = self
            .entries
            .entry(group_id.to_string())
            .or_insert_with(|| Entry { state: State::Waiting(Waiting::new(hard_deadline_at.saturating_add(late_linger))), origins: Vec::new(), timer: None, partition: origin.partition, since: now });
        match &mut entry.state {
            State::Waiting(w) if !w.parities.iter().any(|(j, _, _)| *j == parity_index) => w.parities.push((parity_index, members, output)),
            State::Done { .. } => {
                self.offsets.observe(origin);
                return;
            }
            // Only a parity of this very grouping can decode it.
            State::Open(g) if members as usize == g.members.len() && g.decodable() && matches!(g.parities.get(parity_index as usize), Some(None)) => {
                if let Some(slot) = g.parities.get_mut(parity_index as usize) {
                    *slot = Some(output);
                }
            }
            _ => {
                self.offsets.observe(origin);
                return;
            }
        }
        entry.origins.push(origin);
        self.offsets.hold(origin);
        self.advance(group_id, now, false);
        self.enforce_cap(group_id, now);
    }

    /// Settles groups, the ones due first, until at most `max_groups` are held; never
    /// `keep`, the group that was just added to.
    fn enforce_cap(&mut self, keep: &str, now: u64) {
        while self.entries.len() > self.config.max_groups.max(1) {
            let Some(id) = self.timers.iter().map(|(_, id)| id).find(|id| id.as_str() != keep).cloned() else { return };
            self.settle(&id, now);
        }
    }

    /// Answers every unanswered member of a group as its hard deadline would, and forgets it.
    fn settle(&mut self, id: &str, now: u64) {
        if let Some(Entry { state: State::Open(g), .. }) = self.entries.get_mut(id) {
            for j in 0..g.members.len() {
                if g.members[j].answered.is_some() {
                    continue;
                }
                let (source, output) = match g.members[j].output.clone().map(|o| (Source::Model, o)).or_else(|| try_reconstruct(g, j).map(|o| (Source::Reconstructed, o))) {
                    Some(answer) => answer,
                    None => (Source::Unavailable, Vec::new()),
                };
                answer_member(g, j, id, source, output, now, &mut self.events);
            }
        }
        self.events.push_back(Event::Evicted { group_id: id.to_string() });
        self.remove(id);
    }

    /// Forgets every group of a decoder partition now owned by another instance (which
    /// replays it from the committed offsets), and that partition's offsets.
    pub fn forget_partition(&mut self, partition: i32, topics: &[u8]) {
        let gone: Vec<String> = self.entries.iter().filter(|(_, e)| e.partition == partition).map(|(id, _)| id.clone()).collect();
        for id in gone {
            if let Some(e) = self.entries.remove(&id) {
                if let Some(t) = e.timer {
                    self.timers.remove(&(t, id));
                }
            }
        }
        for t in topics {
            self.offsets.forget(*t, partition);
        }
    }

    /// Records an input that carried nothing for the join (e.g. a dead letter), so that
    /// its offset can still be committed.
    pub fn observe(&mut self, origin: Origin) {
        self.offsets.observe(origin);
    }

    /// When [`Join::handle_timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Lets time act: deadlines, hard deadlines, lag, and dropping finished groups.
    pub fn handle_timeout(&mut self, now: u64) {
        // Each due group is advanced once per call, so no decision can loop.
        let due: Vec<(u64, String)> = self.timers.iter().take_while(|(t, _)| *t <= now).cloned().collect();
        for (t, id) in due {
            self.timers.remove(&(t, id.clone()));
            if let Some(e) = self.entries.get_mut(&id) {
                e.timer = None;
            }
            self.advance(&id, now, true);
        }
    }

    /// The next decision or notice, if any.
    pub fn poll_event(&mut self) -> Option<Event<M>> {
        self.events.pop_front()
    }

    /// Offsets that are safe to commit, as `(topic, partition, next offset)`.
    pub fn committable(&self) -> Vec<(u8, i32, i64)> {
        self.offsets.all_committable()
    }

    /// When the join first heard of the oldest group it still holds (in any state). Every
    /// answer the join gave for a group it still holds, or for a record after the committed
    /// offsets, was given at or after this time: a decoder that replays from those offsets
    /// reads back the answers given since then to know what not to answer again.
    pub fn oldest_since(&self) -> Option<u64> {
        self.entries.values().map(|e| e.since).min()
    }

    /// Number of groups held in memory: open, waiting for a manifest, or finished and
    /// remembered to recognize replayed duplicates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of groups still open or waiting for a manifest.
    pub fn open_groups(&self) -> usize {
        self.entries.values().filter(|e| !matches!(e.state, State::Done { .. })).count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Model partitions currently considered lagging.
    pub fn lagging_partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.lagging.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Applies every decision the group allows at `now`. `timed` is true only from
    /// `handle_timeout`: then deadlines count.
    fn advance(&mut self, id: &str, now: u64, timed: bool) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let mut newly_lagging = Vec::new();
        let next = match &mut entry.state {
            State::Waiting(w) => {
                if timed && now >= w.expires_at {
                    let inputs = w.outputs.len() + w.parities.len();
                    self.events.push_back(Event::Expired { group_id: id.to_string(), inputs });
                    // Some queries were answered: a straggling manifest must not answer
                    // them again.
                    if w.answered.is_empty() {
                        Next::Drop
                    } else {
                        Next::Finish(now.saturating_add(self.config.late_linger_ms))
                    }
                } else {
                    Next::Wake(w.expires_at)
                }
            }
            State::Open(g) => {
                let moment = Moment { config: &self.config, lagging: &self.lagging, now, timed };
                newly_lagging = moment.decide(g, id, &mut self.events);
                match next_wakeup(g, &self.config, &self.lagging, now) {
                    Some(t) => Next::Wake(t),
                    None => match drop_at(g, &self.config, now) {
                        until if now < until => Next::Finish(until),
                        _ => Next::Drop,
                    },
                }
            }
            State::Done { until, .. } if now < *until => Next::Wake(*until),
            State::Done { .. } => Next::Drop,
        };
        match next {
            Next::Wake(t) => self.set_timer(id, t),
            Next::Finish(until) => self.finish(id, until),
            Next::Drop => self.remove(id),
        }
        for p in newly_lagging {
            if self.lagging.insert(p) {
                self.events.push_back(Event::Lagging { model_partition: p });
                self.on_lagging(p, now);
            }
        }
    }

    /// Reconstructs, where possible, every pending member on a partition that just lagged.
    fn on_lagging(&mut self, partition: i32, now: u64) {
        let affected: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| match &e.state {
                State::Open(g) => g.members.iter().any(|m| m.answered.is_none() && m.spec.model_partition == partition),
                State::Waiting(_) | State::Done { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in affected {
            self.advance(&id, now, false);
        }
    }

    fn set_timer(&mut self, id: &str, t: u64) {
        let Some(e) = self.entries.get_mut(id) else { return };
        if e.timer == Some(t) {
            return;
        }
        if let Some(old) = e.timer.replace(t) {
            self.timers.remove(&(old, id.to_string()));
        }
        self.timers.insert((t, id.to_string()));
    }

    /// Releases a finished group's inputs but remembers its id until `until`, so that a
    /// replayed duplicate is not answered again.
    fn finish(&mut self, id: &str, until: u64) {
        if let Some(entry) = self.entries.get_mut(id) {
            let answered = match &entry.state {
                // Strays answered on arrival count too: a manifest that lists them later finds them answered.
                State::Open(g) => g.members.iter().filter(|m| m.answered.is_some()).map(|m| m.spec.index).chain(g.stray.iter().filter(|s| s.2).map(|s| s.0)).collect(),
                State::Waiting(w) => w.answered.clone(),
                State::Done { answered, .. } => answered.clone(),
            };
            entry.state = State::Done { until, answered };
            for o in entry.origins.drain(..) {
                self.offsets.release(o);
            }
        }
        self.set_timer(id, until);
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            if let Some(t) = e.timer {
                self.timers.remove(&(t, id.to_string()));
            }
            for o in e.origins {
                self.offsets.release(o);
            }
        }
    }
}

/// What a group needs after [`Join::advance`].
enum Next {
    /// Attention again at this time.
    Wake(u64),
    /// Finished: forget its inputs, remember its id until this time.
    Finish(u64),
    /// Forget it entirely.
    Drop,
}

fn new_group<M: Clone>(spec: &GroupSpec<M>) -> Group<M> {
    let r = spec.parities.max(1) as usize;
    // r > 1 decodes with the code; a (k, r) it cannot build is decoded by nothing.
    let code = (spec.has_parity && r > 1).then(|| LinearCode::new(spec.k as usize, r).ok()).flatten();
    let no_parity = !spec.has_parity || (r > 1 && code.is_none());
    Group {
        members: spec.members.iter().map(|s| Member { spec: s.clone(), output: None, answered: None }).collect(),
        parities: if no_parity { Vec::new() } else { vec![None; r] },
        code,
        conflicted: false,
        no_parity,
        stray: Vec::new(),
    }
}

/// What a decision goes by: the join's settings, the model partitions known to lag, the
/// time, and whether a timer fired (deadlines act only then; an arrival decides at once
/// only what needs no deadline).
struct Moment<'a> {
    config: &'a JoinConfig,
    lagging: &'a HashSet<i32>,
    now: u64,
    timed: bool,
}

impl Moment<'_> {
    /// Decides what each unanswered member of an open group gets, queueing its result in
    /// `events`; returns the model partitions that this decision shows to be lagging.
    fn decide<M: Clone>(&self, g: &mut Group<M>, id: &str, events: &mut VecDeque<Event<M>>) -> Vec<i32> {
        let Moment { config, lagging, now, timed } = *self;
        let mut newly_lagging = Vec::new();
        for j in 0..g.members.len() {
            if g.members[j].answered.is_some() {
                continue;
            }
            let (deadline_at, hard_deadline_at, partition) = {
                let spec = &g.members[j].spec;
                (spec.deadline_at, spec.hard_deadline_at, spec.model_partition)
            };
            let past_deadline = timed && now >= deadline_at;
            if past_deadline && g.members[j].output.is_none() && config.lag_awareness {
                newly_lagging.push(partition);
            }
            let (source, output) = if let Some(out) = &g.members[j].output {
                (Source::Model, out.clone())
            } else {
                let allowed = match config.policy {
                    Policy::Eager => true,
                    Policy::Deadline => past_deadline || (config.lag_awareness && lagging.contains(&partition)),
                };
                match allowed.then(|| try_reconstruct(g, j)).flatten() {
                    Some(out) => (Source::Reconstructed, out),
                    None if timed && now >= hard_deadline_at => (Source::Unavailable, Vec::new()),
                    None => continue,
                }
            };
            answer_member(g, j, id, source, output, now, events);
        }
        newly_lagging
    }
}

/// Gives member `j` its one answer and queues the result.
fn answer_member<M: Clone>(g: &mut Group<M>, j: usize, id: &str, source: Source, output: Vec<f32>, now: u64, events: &mut VecDeque<Event<M>>) {
    let Some(m) = g.members.get_mut(j) else { return };
    m.answered = Some((source, top1(&output)));
    let spec = m.spec.clone();
    events.push_back(Event::Result(Emission { group_id: id.to_string(), query_id: spec.query_id, index: spec.index, source, output, at: now, meta: spec.meta }));
}

/// The result of a real prediction answered on arrival, before (or without) its group.
fn arrival_result<M: Clone>(group_id: &str, p: &Arrival<M>, now: u64) -> Event<M> {
    Event::Result(Emission {
        group_id: group_id.to_string(),
        query_id: p.query_id.clone(),
        index: p.index,
        source: Source::Model,
        output: p.output.clone(),
        at: now,
        meta: p.meta.clone(),
    })
}

/// Member `j`'s output decoded from the parity outputs: `Fp(P) − Σ_{i≠j} F(Xi)` if the
/// one parity and every other member's prediction are in (r = 1), or the code's solution
/// for every missing member if at least as many parity outputs are in (r > 1).
fn try_reconstruct<M>(g: &Group<M>, j: usize) -> Option<Vec<f32>> {
    if !g.decodable() {
        return None;
    }
    let Some(code) = &g.code else {
        let parity = g.parities.first()?.as_ref()?;
        let mut others = Vec::with_capacity(g.members.len().saturating_sub(1));
        for (i, m) in g.members.iter().enumerate() {
            if i != j {
                others.push(m.output.as_deref()?);
            }
        }
        return reconstruct(parity, others);
    };
    let len = g.parities.iter().flatten().next()?.len();
    // A partial group's empty slots were encoded as zero inputs: they contribute nothing.
    let zeros = vec![0.0f32; len];
    let mut slots: Vec<Option<&[f32]>> = vec![Some(zeros.as_slice()); code.k()];
    for m in &g.members {
        *slots.get_mut(m.spec.index as usize)? = m.output.as_deref();
    }
    let wanted = g.members.get(j)?.spec.index as usize;
    let parities: Vec<Option<&[f32]>> = g.parities.iter().map(Option::as_deref).collect();
    code.recover(&slots, &parities).ok()?.into_iter().find(|(i, _)| *i == wanted).map(|(_, out)| out)
}

/// The last moment a group's inputs can still matter: its last hard deadline plus the
/// late linger.
fn drop_at<M>(g: &Group<M>, config: &JoinConfig, now: u64) -> u64 {
    g.members.iter().map(|m| m.spec.hard_deadline_at).max().unwrap_or(now).saturating_add(config.late_linger_ms)
}

/// When the group next needs attention, or `None` when it is finished.
fn next_wakeup<M>(g: &Group<M>, config: &JoinConfig, lagging: &HashSet<i32>, now: u64) -> Option<u64> {
    let drop_at = drop_at(g, config, now);
    let everything_in = (g.parities_in() || !g.decodable()) && g.members.iter().all(|m| m.output.is_some());
    let all_answered = g.members.iter().all(|m| m.answered.is_some());
    if all_answered && (everything_in || now >= drop_at) {
        return None;
    }
    let next_decision = g
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.answered.is_none())
        .map(|(j, m)| {
            // Under the deadline policy the deadline itself is a decision point: to
            // reconstruct if possible, else to mark the partition as lagging.
            let deadline_matters = config.policy == Policy::Deadline
                && !(config.lag_awareness && lagging.contains(&m.spec.model_partition))
                && (now < m.spec.deadline_at || try_reconstruct(g, j).is_some());
            if deadline_matters {
                m.spec.deadline_at
            } else {
                m.spec.hard_deadline_at
            }
        })
        .min();
    Some(next_decision.map_or(drop_at, |t| t.min(drop_at)))
}

#[cfg(test)]
mod tests;
