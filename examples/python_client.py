"""A parm client in Python: send MNIST test images as queries, print their results.

    pip install -r examples/requirements.txt
    python examples/python_client.py --brokers localhost:9092 --count 5

Queries are plain Avro binary datums of schemas/query.avsc (which names parm.v1.Tensor,
loaded by fastavro from schemas/parm.v1.Tensor.avsc), keyed by id, on PREFIX.queries;
results come back on PREFIX.results keyed by the same id. Prints one JSON line per result.
"""
import argparse, io, json, struct, time, uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import load_schema

repo = Path(__file__).resolve().parent.parent
p = argparse.ArgumentParser()
p.add_argument("--brokers", default="localhost:9092")
p.add_argument("--topic-prefix", default="parm")
p.add_argument("--count", type=int, default=5)
p.add_argument("--timeout-s", type=float, default=30)
a = p.parse_args()

# MNIST test images (idx3: 16-byte header, then 28x28 bytes each) and labels (idx1: 8 bytes).
images = (repo / "models/data/mnist-test-images.idx3-ubyte").read_bytes()
labels = (repo / "models/data/mnist-test-labels.idx1-ubyte").read_bytes()
def pixels(i):  # little-endian float32 values in [0, 1]
    raw = images[16 + 784 * i : 16 + 784 * (i + 1)]
    return struct.pack("<784f", *(b / 255 for b in raw))

# --- the client proper ------------------------------------------------------------------
query_schema = load_schema(str(repo / "schemas/query.avsc"))
result_schema = load_schema(str(repo / "schemas/result.avsc"))
producer = Producer({"bootstrap.servers": a.brokers})
# read_committed: with --delivery exactly-once a result counts only once its transaction
# commits (librdkafka's default too; said here because Java clients default otherwise).
# A fetch waiting at the broker is not answered when a transaction commits, so the wait is
# kept short (5 ms, as parm's own clients; librdkafka's default is 500).
consumer = Consumer({"bootstrap.servers": a.brokers, "group.id": "py-client", "enable.auto.commit": False,
                     "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
results = f"{a.topic_prefix}.results"  # read from each partition's current end, before sending
consumer.assign([TopicPartition(results, p, consumer.get_watermark_offsets(TopicPartition(results, p), timeout=10)[1])
                 for p in consumer.list_topics(results, timeout=10).topics[results].partitions])
run = uuid.uuid4().hex[:8]
expected = {}
for i in range(a.count):
    query = {"id": f"py-{run}-{i}", "tensor": {"shape": [1, 28, 28], "data": pixels(i)},
             "deadline_ms": None, "sent_at_ms": int(time.time() * 1000)}
    buf = io.BytesIO(); schemaless_writer(buf, query_schema, query)
    producer.produce(f"{a.topic_prefix}.queries", key=query["id"], value=buf.getvalue())
    expected[query["id"]] = labels[8 + i]
producer.flush()
until = time.time() + a.timeout_s
while expected and time.time() < until:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    r = schemaless_reader(io.BytesIO(msg.value()), result_schema)
    if r["query_id"] in expected:
        label = expected.pop(r["query_id"])
        print(json.dumps({"id": r["query_id"], "source": r["source"], "top1": r["top1"], "label": label,
                          "latency_ms": r["emitted_at_ms"] - r["sent_at_ms"]}), flush=True)
consumer.close()
if expected:
    raise SystemExit(f"no result within {a.timeout_s} s for {sorted(expected)}")
