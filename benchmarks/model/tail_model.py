"""A discrete-event model of the latency benchmark's main scenario, without Kafka or CPUs.

It asks what p99.9 parm can reach against `equal` under the scenario's service and slowdown
model, whatever the implementation, and tries worker queue disciplines before anyone builds
them. It is a model, not a measurement: the measured numbers are in benchmarks/README.md.

What it models (benchmarks/scenarios/main.toml):
- Poisson arrivals; N model workers (+ N/k parity workers for parm, or N + N/k model workers
  for equal, load-balanced round robin); each a FIFO single server.
- Service time per query 30 + Exp(10) ms, plus 120 ms when it starts inside a slow episode;
  episodes come to each worker as a Poisson process (0.2/s) and last 1 s.
- Encoder (k = 2): members go out on arrival; a group closes at its k-th member or when its
  linger (5 ms) ends; member slots of each round of N are permuted (seeded), parity round robin.
- Decoder: a member is reconstructed once the parity and the other members' outputs are in,
  at its deadline (100 ms after arrival) at the earliest, or at once (`--eager`); otherwise
  its own model answers it.
- Workers skip a queued member that is already answered, and a parity query whose members
  all are (`--skip-answered`).
- Health routing (`health="reports"`, what `--route-by-health` does): a worker reports itself
  slow once a service has run 80 ms, and healthy after a fast service or 80 ms idle; a report
  reaches the encoder 10 ms later. A query bound for a slow worker closes the open group and
  gets a group of its own, closed at once; parity goes to the next parity worker not reported
  slow; a parity worker that turns slow has the parity queries of the last 500 ms sent again
  to healthy ones (once each). Member queries go where they would go without it.
  `health="oracle"`: the encoder knows every episode the moment it starts (a bound).
Policies of the model workers: `fifo` (what parm does); `defer` (a worker inside an episode
serves overdue unanswered members first and holds fresh ones until they are answered or
overdue); `cancel` (a worker stops the member in service once it is reconstructed: preemptive
cancellation, which the real worker does not do).

    python3 benchmarks/model/tail_model.py              # the comparison in benchmarks/README.md
    python3 benchmarks/model/tail_model.py --runs 15    # more seeds
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Scenario:
    queries: int = 10000
    warmup: int = 300
    qps: float = 150.0
    model_workers: int = 12
    k: int = 2
    linger_ms: float = 5.0
    deadline_ms: float = 100.0
    service_ms: float = 30.0
    service_exp_ms: float = 10.0
    episode_rate: float = 0.2  # per second, per worker
    episode_ms: float = 1000.0
    episode_extra_ms: float = 120.0


class Worker:
    """A single server with a FIFO queue and its own slowdown episodes."""

    def __init__(self, sc: Scenario, rng: random.Random) -> None:
        self.sc, self.rng = sc, rng
        self.queue: deque = deque()
        self.serving = None  # the item in service, or None when idle
        self.version = 0  # bumped when service is cut short, to drop its completion event
        self.episode: tuple[float, float] | None = None
        self.serial, self.started, self.reported_slow = 0, 0.0, False

    def in_episode(self, now: float) -> bool:
        while True:
            if self.episode is None:
                gap = self.rng.expovariate(self.sc.episode_rate) * 1000.0
                self.episode = (now + gap, now + gap + self.sc.episode_ms)
            start, end = self.episode
            if now < end:
                return now >= start
            self.episode = None

    def service_time(self, now: float) -> float:
        t = self.sc.service_ms + self.rng.expovariate(1.0 / self.sc.service_exp_ms)
        return t + (self.sc.episode_extra_ms if self.in_episode(now) else 0.0)


@dataclass
class Group:
    members: list[int]
    parity_done: float | None = None
    closed: bool = False
    resent: bool = False


@dataclass
class Run:
    sc: Scenario
    mode: str  # "parm" or "equal"
    policy: str = "fifo"
    eager: bool = False
    health: str | None = None  # None, "reports" (--route-by-health) or "oracle"
    slow_after_ms: float = 80.0
    report_ms: float = 10.0
    resend_window_ms: float = 500.0
    seed: int = 1
    events: list = field(default_factory=list)

    def push(self, time: float, kind: str, *data) -> None:
        self._seq += 1
        heapq.heappush(self.events, (time, self._seq, kind, data))

    def simulate(self) -> dict:
        sc, rng = self.sc, random.Random(self.seed)
        self._seq = 0
        t, self.arrival = 0.0, []
        for _ in range(sc.queries):
            t += rng.expovariate(sc.qps / 1000.0)
            self.arrival.append(t)
        n_parity = sc.model_workers // sc.k
        n_model = sc.model_workers if self.mode == "parm" else sc.model_workers + n_parity
        self.workers = [Worker(sc, random.Random(self.seed * 1000 + i)) for i in range(n_model)]
        self.parity = [Worker(sc, random.Random(self.seed * 1000 + 100 + i)) for i in range(n_parity)] if self.mode == "parm" else []
        self.answered: list[float | None] = [None] * sc.queries
        self.reconstructed = 0
        self.resent = 0
        self.parity_log: dict[int, deque] = {}
        self.model_done: list[float | None] = [None] * sc.queries
        self.group_of: list[int] = [0] * sc.queries
        self.groups: list[Group] = []
        self.open: int | None = None
        self.slot = self.parity_slot = 0
        self.perms: dict[int, list[int]] = {}
        for q, a in enumerate(self.arrival):
            self.push(a, "arrive", q)
        while self.events:
            now, _, kind, data = heapq.heappop(self.events)
            getattr(self, f"on_{kind}")(now, *data)
        lat = sorted(self.answered[q] - self.arrival[q] for q in range(sc.warmup, sc.queries))
        pick = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
        return {"p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999), "reconstructed": self.reconstructed, "resent": self.resent}

    # --- the encoder ---
    def member_worker(self) -> Worker:
        s, n = self.slot, len(self.workers)
        self.slot += 1
        if self.mode != "parm":
            return self.workers[s % n]
        rnd, pos = divmod(s, n)
        if rnd not in self.perms:
            perm = list(range(n))
            random.Random(self.seed * 7 + rnd).shuffle(perm)
            self.perms[rnd] = perm
        return self.workers[self.perms[rnd][pos]]

    def on_arrive(self, now: float, q: int) -> None:
        w = self.member_worker()
        w.queue.append(q)
        self.start(w, now, parity=False)
        if self.mode != "parm":
            return
        solo = self.health is not None and self.slow(w, now)
        if solo and self.open is not None:
            self.close(self.open, now)  # its group must not wait for a partner
        if self.open is None:
            self.open = len(self.groups)
            self.groups.append(Group([q]))
            self.push(now + self.sc.linger_ms, "linger", self.open)
        else:
            self.groups[self.open].members.append(q)
        g = self.group_of[q] = self.open
        if len(self.groups[g].members) == self.sc.k or solo:
            self.close(g, now)
        self.push(self.arrival[q] + self.sc.deadline_ms, "deadline", q)

    def on_linger(self, now: float, g: int) -> None:
        self.close(g, now)

    def close(self, g: int, now: float) -> None:
        if self.groups[g].closed:
            return
        self.groups[g].closed = True
        if self.open == g:
            self.open = None
        self.send_parity(g, self.parity_slot % len(self.parity), now)
        self.parity_slot += 1

    def send_parity(self, g: int, preferred: int, now: float) -> None:
        n = len(self.parity)
        i = preferred
        if self.health is not None:  # the first parity worker from the preferred on not slow
            i = next((j % n for j in range(preferred, preferred + n) if not self.slow(self.parity[j % n], now)), preferred)
            self.parity_log.setdefault(i, deque()).append((now, g))
        w = self.parity[i]
        w.queue.append(g)
        self.start(w, now, parity=True)

    # --- health reports ---
    def slow(self, w: Worker, now: float) -> bool:
        return w.in_episode(now) if self.health == "oracle" else w.reported_slow

    def on_watch(self, now: float, w: Worker, serial: int) -> None:
        if w.serial == serial and w.serving is not None:  # still in the same service
            self.push(now + self.report_ms, "report", w, True)

    def on_report(self, now: float, w: Worker, slow: bool) -> None:
        turned_slow = slow and not w.reported_slow
        w.reported_slow = slow
        if turned_slow and w in self.parity:
            i = self.parity.index(w)
            log = self.parity_log.pop(i, deque())
            for at, g in log:
                if at + self.resend_window_ms >= now and not self.groups[g].resent:
                    self.groups[g].resent = True
                    self.resent += 1
                    self.send_parity(g, (i + 1) % len(self.parity), now)

    # --- the decoder ---
    def answer(self, q: int, now: float, reconstructed: bool) -> None:
        if self.answered[q] is not None:
            return
        self.answered[q] = now
        if reconstructed:
            self.reconstructed += 1
            if self.policy == "cancel":
                for w in self.workers:
                    if w.serving == q:  # stop the now useless work and take the next
                        w.serving, w.version = None, w.version + 1
                        self.start(w, now, parity=False)

    def try_reconstruct(self, g: int, now: float) -> None:
        grp = self.groups[g]
        if grp.parity_done is None:
            return
        for q in grp.members:
            others_in = all(self.model_done[o] is not None for o in grp.members if o != q)
            if self.answered[q] is None and others_in and (self.eager or now >= self.arrival[q] + self.sc.deadline_ms):
                self.answer(q, now, reconstructed=True)

    def on_deadline(self, now: float, q: int) -> None:
        if self.answered[q] is None:
            self.try_reconstruct(self.group_of[q], now)
        if self.policy == "defer":
            for w in self.workers:
                self.start(w, now, parity=False)

    # --- the workers ---
    def needed(self, item: int, parity: bool) -> bool:
        if parity:
            return any(self.answered[q] is None for q in self.groups[item].members)
        return self.answered[item] is None

    def start(self, w: Worker, now: float, parity: bool) -> None:
        if w.serving is not None:
            return
        while w.queue and not self.needed(w.queue[0], parity):
            w.queue.popleft()  # --skip-answered
        if not w.queue:
            return
        if not parity and self.policy == "defer" and w.in_episode(now):
            overdue = [q for q in w.queue if self.needed(q, False) and now >= self.arrival[q] + self.sc.deadline_ms]
            if not overdue:
                return  # woken again at the next deadline or completion
            item = overdue[0]
            w.queue.remove(item)
        else:
            item = w.queue.popleft()
        w.serving = item
        w.serial += 1
        w.started = now
        if self.health == "reports":
            self.push(now + self.slow_after_ms, "watch", w, w.serial)
        self.push(now + w.service_time(now), "done", w, item, w.version, parity)

    def on_done(self, now: float, w: Worker, item: int, version: int, parity: bool) -> None:
        if version != w.version:
            return  # cut short by `cancel`
        w.serving = None
        took = now - w.started
        if parity:
            if self.groups[item].parity_done is None:  # a second copy's output is ignored
                self.groups[item].parity_done = now
            self.try_reconstruct(item, now)
        else:
            self.model_done[item] = now
            self.answer(item, now, reconstructed=False)
            if self.mode == "parm":
                self.try_reconstruct(self.group_of[item], now)
        self.start(w, now, parity)
        if self.health == "reports":  # slow after a slow service, until a fast one or idle for a while
            slow = took >= self.slow_after_ms
            self.push(now + self.report_ms, "report", w, slow)
            if slow and w.serving is None:
                self.push(now + self.slow_after_ms, "idle_check", w, w.serial)

    def on_idle_check(self, now: float, w: Worker, serial: int) -> None:
        if w.serial == serial and w.serving is None:  # idle since its slow service
            self.push(now + self.report_ms, "report", w, False)


VARIANTS = [
    ("equal", dict(mode="equal")),
    ("parm, deadline, blind", dict(mode="parm")),
    ("parm, eager, blind", dict(mode="parm", eager=True)),
    ("parm, deadline, defer when slow", dict(mode="parm", policy="defer")),
    ("parm, eager, defer when slow", dict(mode="parm", policy="defer", eager=True)),
    ("parm, deadline, cancel in service", dict(mode="parm", policy="cancel")),
    ("parm, eager, cancel in service", dict(mode="parm", policy="cancel", eager=True)),
    ("parm, deadline, health routing (as built)", dict(mode="parm", health="reports")),
    ("parm, eager, health routing (as built)", dict(mode="parm", eager=True, health="reports")),
    ("parm, eager, health routing, episodes known at once (a bound)", dict(mode="parm", eager=True, health="oracle")),
]


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=9, help="seeds per variant (medians are reported)")
    p.add_argument("--episode-extra-ms", type=float, default=120.0, help="extra service time in an episode (120: 4x slower)")
    p.add_argument("--qps", type=float, default=150.0)
    args = p.parse_args()
    sc = Scenario(episode_extra_ms=args.episode_extra_ms, qps=args.qps)
    print(f"{args.runs} seeds per variant, {sc.queries} queries each; medians over seeds; ms")
    print("| variant | p50 | p99 | p99.9 | p99.9 / equal's | parity copies |")
    print("|---|---|---|---|---|---|")
    equal = None
    for name, kw in VARIANTS:
        res = [Run(sc, seed=s, **kw).simulate() for s in range(1, args.runs + 1)]
        p999 = median([r["p999"] for r in res])
        equal = equal or p999
        print(f"| {name} | {median([r['p50'] for r in res]):.1f} | {median([r['p99'] for r in res]):.0f} | {p999:.0f} | {p999 / equal:.2f} | {median([r['resent'] for r in res])} |")


if __name__ == "__main__":
    main()
