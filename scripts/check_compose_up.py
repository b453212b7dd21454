"""The checks of scripts/check-compose-up, run from the host against the compose stack.

scripts/check-compose-up prepares the engine, the build proxy and the images, then runs
this with PARM_BIN (a host parm binary), PARM_VENV (the client venv),
PARM_COMPOSE_PROJECT and PARM_DOCKER set. Prints one ok/FAIL line per check and exits 1
if any failed. Every wait polls a condition (health, targets, results) up to a limit.
"""
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

PARM = os.environ["PARM_BIN"]
VENV = os.environ["PARM_VENV"]
PROJECT = os.environ["PARM_COMPOSE_PROJECT"]
DOCKER = os.environ["PARM_DOCKER"]
SINGLE = ["-f", "docker-compose.yml"]
KAFKA3 = SINGLE + ["-f", "docker-compose.kafka3.yml"]
# Everything but Grafana, whose image no registry reachable here has.
SERVICES = ["kafka", "topics", "encoder", "model-worker", "parity-worker", "decoder", "jaeger", "prometheus"]
HOST_BROKERS = "localhost:9092"
failed = 0


def ok(msg):
    print(f"ok   {msg}", flush=True)


def bad(msg):
    global failed
    failed += 1
    print(f"FAIL {msg}", flush=True)


def say(msg):
    print(f"check-compose-up: {msg}", file=sys.stderr, flush=True)


def compose(files, *args, capture=False, check=True):
    cmd = ["docker-compose", "-p", PROJECT, *files, *args]
    r = subprocess.run(cmd, capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {(r.stderr or '')[-2000:]}")
    return r


def inspect(cid):
    out = subprocess.run([DOCKER, "inspect", cid], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def containers(files, service=None):
    """{container id: inspect JSON} of the project's containers (of one service)."""
    args = ["ps", "-q", "-a"] + ([service] if service else [])
    ids = compose(files, *args, capture=True).stdout.split()
    return {c: inspect(c) for c in ids}


def service_of(info):
    return info["Config"]["Labels"].get("com.docker.compose.service", "?")


def poll(limit_s, fn):
    """fn() until it returns a true value or limit_s passes; returns the last value."""
    until = time.time() + limit_s
    while True:
        value = fn()
        if value or time.time() >= until:
            return value
        time.sleep(1)


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def not_ready(files):
    """The containers that are not (yet) what they should be: one-shot jobs exited 0,
    services running and healthy where they have a health check."""
    waiting = []
    for cid, info in containers(files).items():
        name, state = info["Name"].lstrip("/"), info["State"]
        if service_of(info) == "topics":
            if state["Status"] != "exited" or state["ExitCode"] != 0:
                waiting.append(f"{name}: {state['Status']} (exit {state.get('ExitCode')})")
        elif state["Status"] != "running" or info["RestartCount"] > 0:
            waiting.append(f"{name}: {state['Status']}, {info['RestartCount']} restarts")
        elif "Health" in state and state["Health"]["Status"] != "healthy":
            waiting.append(f"{name}: {state['Health']['Status']}")
    return waiting


def crash_looping(files):
    """Containers restarted three times or more: waiting longer will not make them healthy."""
    return [i for i in containers(files).values() if i["RestartCount"] >= 3 and service_of(i) != "topics"]


def wait_healthy(files, what, limit_s=300):
    started = time.time()
    poll(limit_s, lambda: not not_ready(files) or crash_looping(files))
    left = not_ready(files)
    if left:
        logs = "".join(
            f"\n--- {i['Name'].lstrip('/')} (last lines) ---\n"
            + subprocess.run([DOCKER, "logs", "--tail", "15", i["Id"]], capture_output=True, text=True).stdout[-1500:]
            for i in crash_looping(files))
        bad(f"{what}: not healthy after {time.time() - started:.0f} s: {left}{logs}")
        return False
    n = len(containers(files))
    ok(f"{what}: all {n} containers healthy (jobs done) {time.time() - started:.0f} s after up")
    return True


def round_trip(what, count, rate=40, timeout_s=120):
    """`parm produce` COUNT queries from the host; `parm consume` must read a result for each."""
    prefix = f"cc{int(time.time() * 1000) % 10**8}"
    consumer = subprocess.Popen(
        [PARM, "consume", "--brokers", HOST_BROKERS, "--count", "1000000", "--timeout-s", str(timeout_s), "--from", "now"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    subprocess.run([PARM, "produce", "--brokers", HOST_BROKERS, "--count", str(count), "--rate", str(rate),
                    "--id-prefix", prefix], check=True, capture_output=True)
    seen, sources, deadline = {}, {}, time.time() + timeout_s
    for line in consumer.stdout:
        r = json.loads(line)
        if r["query_id"].startswith(prefix + "-") and r["query_id"] not in seen:
            seen[r["query_id"]] = r["source"]
            sources[r["source"]] = sources.get(r["source"], 0) + 1
        if len(seen) >= count or time.time() > deadline:
            break
    consumer.kill()
    consumer.wait()
    if len(seen) == count:
        ok(f"{what}: parm produce, {count} queries: {count} results {sources}")
    else:
        bad(f"{what}: parm produce, {count} queries: only {len(seen)} results {sources}")
    return seen


def python_client(what, count=30):
    r = subprocess.run([f"{VENV}/bin/python", "examples/python_client.py", "--brokers", HOST_BROKERS,
                        "--count", str(count), "--timeout-s", "90"], capture_output=True, text=True)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode == 0 and len(lines) == count:
        right = sum(1 for x in lines if x["top1"] == x["label"])
        ok(f"{what}: examples/python_client.py, {count} queries: {count} results ({right} right)")
    else:
        bad(f"{what}: examples/python_client.py: {len(lines)} of {count} results, exit {r.returncode}: {r.stderr[-500:]}")


def scraped():
    """{compose service: number of its targets Prometheus scrapes with health up}."""
    try:
        targets = get_json("http://localhost:9090/api/v1/targets?state=active")["data"]["activeTargets"]
    except OSError:
        return {}
    up = {}
    for t in targets:
        if t["labels"].get("job") == "parm" and t["health"] == "up":
            s = t["labels"].get("service", "?")
            up[s] = up.get(s, 0) + 1
    return up


def check_scrape(what, want):
    got = poll(90, lambda: scraped() == want and want) or scraped()
    if got == want:
        ok(f"{what}: Prometheus scrapes {want} (DNS discovery)")
    else:
        bad(f"{what}: Prometheus scrapes {got}, want {want}")


def check_trace(query_id):
    """The trace of query QUERY_ID (found by its Kafka key, as docs/local-cluster.md says to)
    holds the encoder's, a model worker's and the decoder's spans, intake to result."""
    want = {("process parm.queries", "parm-encoder"), ("send parm.model-queries", "parm-encoder"),
            ("process parm.model-queries", "parm-model-worker"), ("send parm.predictions", "parm-model-worker"),
            ("process parm.predictions", "parm-decoder"), ("send parm.results", "parm-decoder")}

    def find():
        q = urllib.parse.urlencode({"service": "parm-decoder", "operation": "send parm.results", "limit": 20,
                                    "lookback": "1h", "tags": json.dumps({"messaging.kafka.message.key": query_id})})
        try:
            traces = get_json(f"http://localhost:16686/api/traces?{q}")["data"] or []
        except OSError:
            return None
        for t in traces:
            procs = {k: v["serviceName"] for k, v in t["processes"].items()}
            have = {(s["operationName"], procs.get(s["processID"], "?")) for s in t["spans"]}
            if want <= have:
                return t["traceID"], len(t["spans"])
        return None

    found = poll(90, find)
    if found:
        ok(f"Jaeger holds query {query_id}'s whole trace ({found[1]} spans, trace {found[0]}): encoder, model worker, decoder")
    else:
        bad(f"Jaeger: no trace of query {query_id} holds all of {sorted(want)}")


def check_restarts():
    workers = containers(SINGLE, "model-worker")
    running = [c for c, i in workers.items() if i["State"]["Status"] == "running"]
    if len(running) < 2:
        bad(f"restart: want 2 running model workers, have {len(running)}")
        return
    # A crash: the container's process dies (SIGKILL from outside, as an OOM kill would).
    crash, stop = running[0], running[1]
    before = inspect(crash)["RestartCount"]
    os.kill(inspect(crash)["State"]["Pid"], 9)
    back = poll(60, lambda: (lambda i: i["RestartCount"] > before and i["State"]["Status"] == "running")(inspect(crash)))
    if back:
        ok(f"a model worker whose process was SIGKILLed was restarted by its restart policy (restarts {before} -> {inspect(crash)['RestartCount']})")
    else:
        bad(f"a model worker whose process was SIGKILLed was not restarted: {inspect(crash)['State']}")
    # `docker kill`: Docker counts it as stopped by hand (no restart policy applies,
    # moby/moby#21359); the pipeline answers without it, and `up -d` starts it again.
    subprocess.run([DOCKER, "kill", stop], check=True, capture_output=True)
    state = poll(30, lambda: inspect(stop)["State"]["Status"] == "exited" and "exited")
    round_trip(f"one model worker docker-killed ({state})", 100)
    compose(SINGLE, "up", "-d", "--no-recreate", "--scale", "model-worker=6", *SERVICES, capture=True)
    if poll(60, lambda: inspect(stop)["State"]["Status"] == "running"):
        ok("the docker-killed model worker runs again after `docker compose up -d`")
    else:
        bad(f"the docker-killed model worker did not come back: {inspect(stop)['State']}")
    round_trip("after the restarts", 100)


def single():
    started = time.time()
    compose(SINGLE, "up", "-d", "--build", *SERVICES)
    say(f"docker compose up -d --build: {time.time() - started:.0f} s")
    if not wait_healthy(SINGLE, "docker-compose.yml"):
        return
    answered = round_trip("docker-compose.yml", 200)
    python_client("docker-compose.yml")
    workers = int(os.environ.get("PARM_MODEL_WORKERS", "4"))
    check_scrape("docker-compose.yml", {"encoder": 1, "model-worker": workers, "parity-worker": 2, "decoder": 1})
    by_model = sorted(q for q, source in answered.items() if source == "MODEL")
    if by_model:
        check_trace(by_model[len(by_model) // 2])
    else:
        bad("no MODEL result to look up in Jaeger")
    compose(SINGLE, "up", "-d", "--no-recreate", "--scale", "model-worker=6", *SERVICES, capture=True)
    wait_healthy(SINGLE, "--scale model-worker=6")
    check_scrape("--scale model-worker=6", {"encoder": 1, "model-worker": 6, "parity-worker": 2, "decoder": 1})
    round_trip("six model workers", 100)
    check_restarts()


def kafka3():
    started = time.time()
    compose(KAFKA3, "up", "-d", "--build", *SERVICES, "kafka-2", "kafka-3")
    say(f"three brokers: docker compose up -d --build: {time.time() - started:.0f} s")
    if not wait_healthy(KAFKA3, "docker-compose.yml + docker-compose.kafka3.yml", limit_s=420):
        return
    round_trip("three brokers", 100)
    compose(KAFKA3, "stop", "kafka-2", capture=True)
    round_trip("three brokers, kafka-2 stopped", 100, timeout_s=180)


def main():
    say("Grafana is not run: its image (grafana/grafana) is in no registry reachable here")
    try:
        single()
    except Exception as e:  # a failed compose command: report it, go on to the next variant
        bad(f"docker-compose.yml: {e}")
    finally:
        compose(SINGLE, "down", "-v", "--remove-orphans", capture=True, check=False)
    try:
        kafka3()
    except Exception as e:
        bad(f"docker-compose.kafka3.yml: {e}")
    finally:
        compose(KAFKA3, "down", "-v", "--remove-orphans", capture=True, check=False)
    leftover = subprocess.run([DOCKER, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True).stdout.split()
    if leftover:
        bad(f"docker compose down -v left containers: {leftover}")
    else:
        ok("docker compose down -v: no container of the project is left")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
