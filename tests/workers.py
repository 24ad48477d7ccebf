"""Functions run in spawned processes by the tests (importable by the child)."""

import json
import os
import signal
import socket
import struct
import time
import zlib

import pymq

HDR = struct.Struct("<IIQ")  # publisher id, index, crc of the body


def make_payload(pub: int, i: int, size: int) -> bytes:
    body = (f"{pub}:{i}:".encode() * (size // 4 + 1))[:max(0, size - HDR.size)]
    return HDR.pack(pub, i, zlib.crc32(body)) + body


def parse_payload(p: bytes) -> tuple[int, int]:
    pub, i, crc = HDR.unpack_from(p)
    assert zlib.crc32(p[HDR.size:]) == crc, "torn or corrupt payload"
    return pub, i


def publisher(name, topic, pub, count, size, batch, start_evt=None):
    c = pymq.connect(name)
    if start_evt is not None:
        start_evt.wait(30)
    i = 0
    while i < count:
        if batch > 1:
            n = min(batch, count - i)
            c.publish_many(topic, [make_payload(pub, i + k, size) for k in range(n)], timeout=30)
            i += n
        else:
            c.publish(topic, make_payload(pub, i, size), timeout=30)
            i += 1
    c.close()


def collector(name, topic, group, expected_total, out_q, ready_evt, batch=64, start="latest",
              idle_timeout=20.0):
    """Receive until expected_total messages arrived in the group (or idle);
    report (pid, [(pub, i), ...]) in arrival order."""
    c = pymq.connect(name)
    sub = c.subscribe(topic, group=group, start=start)
    ready_evt.set()
    got = []
    while len(got) < expected_total:
        try:
            items = sub.get_many(batch, timeout=idle_timeout) if batch > 1 else [sub.get(timeout=idle_timeout)]
        except pymq.Timeout:
            break  # a group member: the others took the rest
        got.extend(parse_payload(p) for p in items)
    out_q.put((os.getpid(), got))
    sub.close()
    c.close()


def hold_after_first(first_q, hold_evt):
    """After a member's first read: report its pid on first_q (if given) and wait
    for hold_evt, so that its group's other members must take the next messages."""
    if first_q is not None:
        first_q.put(os.getpid())
        if not hold_evt.wait(30):
            raise RuntimeError("never released")


def group_member(name, topic, group, out_q, ready_evt, stop_evt, batch=16, alternate=False,
                 first_q=None, hold_evt=None):
    """A member of a group that reads until stop_evt is set and the topic is idle;
    get_many(batch), or, with alternate, get() and get_many(batch) in turn.
    Reports (pid, [(pub, i), ...]), every payload's crc checked (parse_payload).
    With first_q: after its first read it puts its pid there and waits for
    hold_evt, so that the group's other members must take the next messages."""
    c = pymq.connect(name)
    sub = c.subscribe(topic, group=group)
    ready_evt.set()
    got, n = [], 0
    while True:
        n += 1
        try:
            items = [sub.get(timeout=0.2)] if alternate and n % 2 else sub.get_many(batch, timeout=0.2)
        except pymq.Timeout:
            if stop_evt.is_set():
                break
            continue
        got.extend(parse_payload(p) for p in items)
        if len(got) == len(items):
            hold_after_first(first_q, hold_evt)
    out_q.put((os.getpid(), got))
    c.close()


def subscriber_then_hang(name, topic, ready_evt, group=None):
    """Subscribe, read nothing, wait to be killed."""
    c = pymq.connect(name)
    c.subscribe(topic, group=group)
    ready_evt.set()
    while True:
        time.sleep(1)


def hammer_publisher(name, topic, size, ready_evt):
    """Publish valid payloads as fast as possible until killed."""
    c = pymq.connect(name)
    ready_evt.set()
    i = 0
    while True:
        c.publish_many(topic, [make_payload(9, i + k, size + (i + k) % 97) for k in range(8)], timeout=30)
        i += 8


def own_broker_then_hang(name, topic, ready_evt):
    """Create a Broker and a topic, then wait to be SIGKILLed (a dead owner)."""
    b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, max_message_bytes=1024))
    b.publish(topic, b"x")
    b.subscribe(topic)
    ready_evt.set()
    while True:
        time.sleep(1)


def ack_member(name, topic, group, out_q, ready_evt, stop_evt, batch=16, nack_every=0,
               ack_timeout_hint=None, first_q=None, hold_evt=None):
    """An ack group member: read, ack (nack every nack_every-th first delivery),
    until stop_evt and idle. Reports (pid, [(pub, i, seq, attempt), ...]).
    first_q, hold_evt: as group_member's."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group=group)
    ready_evt.set()
    got, k = [], 0
    while True:
        try:
            msgs = sub.get_many(batch, timeout=0.2)
        except pymq.Timeout:
            if stop_evt.is_set():
                break
            continue
        keep = []
        for m in msgs:
            k += 1
            if nack_every and m.delivery_attempt == 1 and k % nack_every == 0:
                m.nack()
                continue
            pub, i = parse_payload(m.payload)
            got.append((pub, i, m.seq, m.delivery_attempt))
            keep.append(m)
        sub.ack_many(keep)
        if k == len(msgs):
            hold_after_first(first_q, hold_evt)
    out_q.put((os.getpid(), got))
    c.close()


def take_and_hang(name, topic, group, count, out_q):
    """Take `count` messages without acking them, report their seqs, then hang."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group=group)
    out_q.put("subscribed")
    got = []
    while len(got) < count:
        got += sub.get_many(count - len(got), timeout=30)
    out_q.put(sorted(m.seq for m in got))
    while True:
        time.sleep(1)


def persistent_broker_then_hang(name, pdir, n, acks, ready_evt):
    """Own a persistent broker, publish n messages, have a group take them all
    and ack the first `acks`; then wait to be killed with everything else."""
    b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=1 << 20, persistence_enabled=True,
                                      persistence_dir=pdir, persistence_fsync_interval=0.05))
    sub = b.subscribe_with_ack("t", group="g")
    b.publish_many("t", [b"m%d" % i for i in range(n)])
    got = []
    while len(got) < n:
        got += sub.get_many(n, timeout=10)
    sub.ack_many(got[:acks])
    ready_evt.set()
    while True:
        time.sleep(1)


def iterate_then_break(name, topic, group, ack, take, out_q, ready_evt, then="exit"):
    """Subscribe (ack or not, group or anonymous), take `take` items by
    iterating and break out of the loop; report what was taken. then:
    "exit" (close and leave), "again" (a second loop: report what it gets within
    a short idle timeout, then exit), "hang" (stay alive, to be killed)."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group=group) if ack else c.subscribe(topic, group=group)
    ready_evt.set()
    got = []
    for item in sub:
        got.append(bytes(item.payload) if ack else item)
        if len(got) == take:
            break
    out_q.put(("first", got))
    if then == "again":
        more = []
        while True:
            try:
                more.append(sub.get(timeout=1.0))
            except pymq.Timeout:
                break
        out_q.put(("again", more))
    elif then == "hang":
        while True:
            time.sleep(1)
    sub.close()
    c.close()


def ack_pending_after_next(name, topic, out_q, ready_evt, go_evt):
    """One next() on an ack subscription's iterator; report the group's pending
    count then (before acking), and stay until told to go."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group="g")
    ready_evt.set()
    msg = next(iter(sub))
    out_q.put(c.stats()["topics"][topic]["groups"]["g"]["pending"])
    go_evt.wait(30)
    msg.ack()
    out_q.put(c.stats()["topics"][topic]["groups"]["g"]["pending"])
    sub.close()
    c.close()


def broker_in_a_process(name, ready_evt, env_name=False):
    """Own a broker (named by $PYMQ_NAME when env_name) until killed."""
    if env_name:
        os.environ["PYMQ_NAME"] = name
        b = pymq.Broker()
    else:
        b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, max_message_bytes=1024))
    b.publish("t", b"first")
    ready_evt.set()
    while True:
        time.sleep(1)


def publish_one(name, topic, payload):
    """Publish one message (a test point may stop this process inside)."""
    pymq.connect(name).publish(topic, payload, timeout=30)


def ack_get_once(name, topic, group, out_q):
    """Join an ack group, take what one read gives (a test point may stop this
    process inside, holding the group's lock), ack it, report the payloads."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group=group)
    got = sub.get_many(100, timeout=30)
    sub.ack_many(got)
    out_q.put([m.payload for m in got])


def ack_get_after(name, topic, group, out_q, ready_evt):
    """Join an ack group, say so, then take, ack and report one read."""
    c = pymq.connect(name)
    sub = c.subscribe_with_ack(topic, group=group)
    ready_evt.set()
    got = sub.get_many(100, timeout=60)
    sub.ack_many(got)
    out_q.put([m.payload for m in got])


def broker_until_sigterm(name, ready_evt):
    """Own a broker until SIGTERM, then close it (as pymq serve does)."""
    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    with pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, max_message_bytes=1024)):
        ready_evt.set()
        while True:
            time.sleep(1)


def publish_each(name, topics):
    """Publish each topic's own name to it."""
    c = pymq.connect(name)
    for t in topics:
        c.publish(t, t.encode(), timeout=30)


def drain_group(name, topic, group, count):
    """Read count messages as a member of a plain group, then leave."""
    c = pymq.connect(name)
    sub = c.subscribe(topic, group=group)
    got = 0
    while got < count:
        got += len(sub.get_many(count - got, timeout=30))


# -- another user (tests/test_security.py) -----------------------------------------------
# Started as root, these drop to another uid before doing anything: everything
# they need is imported above, since that uid may not read the interpreter's
# own files.

def as_user(uid, gid, out_q, job, *args):
    """Drop root for good (no supplementary groups, then gid, then uid), run
    job(*args), and put ("ok", its result) or ("error", class, message) on out_q."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        out_q.put(("ok", job(*args)))
    except BaseException as e:  # reported to the test, which fails on it
        out_q.put(("error", type(e).__name__, str(e)))


def outcome(fn):
    """"ok", or "Class: message" of what fn() raised."""
    try:
        fn()
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def try_a_brokers_doors(name, topic, token_file, log_file):
    """What this user gets at each door of broker `name`, and which of its
    names it can see in /dev/shm."""
    from pymq import control, segments
    return {"connect": outcome(lambda: pymq.connect(name)),
            "attach": outcome(lambda: segments.Segment.attach(
                segments.topic_shm_name(name, topic))),
            "token": outcome(lambda: open(token_file, "rb").close()),
            "control": outcome(lambda: control.request(name, "ping", timeout=1)),
            "log": outcome(lambda: open(log_file, "rb").close()),
            "names": sorted(e for e in os.listdir(segments.SHM_DIR)
                            if e.startswith(segments.namespace_prefix(name)))}


def connect_error(name):
    """The class names (MRO) and message of what connect() raises here."""
    try:
        pymq.connect(name)
    except Exception as e:
        return [c.__name__ for c in type(e).__mro__], str(e)
    return None


def control_exchange(path, request):
    """Send one request line to a control socket; return all that comes back
    (b"" when the connection is closed without an answer)."""
    answer = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        try:
            s.sendall(json.dumps(request).encode() + b"\n")
            while chunk := s.recv(4096):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us before the request was read
    return answer


def plant_topic(name, topic, capacity, max_msg):
    """Make a valid topic segment of broker `name`, readable and writable by
    all, as a user who got to the name first would."""
    from pymq import _core, segments
    params = _core.ring_params(capacity, max_msg, os.getpid(), segments.start_stamp())
    seg = segments.Segment.create(segments.topic_shm_name(name, topic), _core.ring_size(params),
                                  mode=0o666)
    _core.Ring.init(seg, params)
    seg.close()


def plant_token(name, value):
    """Make a file with a liveness token's name in broker `name`'s namespace,
    readable and writable by all, locked by nobody (a dead process's, it says)."""
    from pymq import segments
    path = segments.token_path(name, value)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    os.fchmod(fd, 0o666)
    os.write(fd, json.dumps({"pid": 1, "start": 0.0, "pidns": ""}).encode())
    os.close(fd)
    return path


def own_files_among_others(name, theirs):
    """As a user who is not root: make a segment and a token of broker `name`,
    then attach one's own and another user's (`theirs`, a topic), list the
    token files, and remove the namespace."""
    from pymq import segments
    segments.Segment.create(segments.topic_shm_name(name, "mine"), 4096).close()
    token = segments.Token(name)
    result = {
        "attach mine": outcome(lambda: segments.Segment.attach(
            segments.topic_shm_name(name, "mine")).close()),
        "attach theirs": outcome(lambda: segments.Segment.attach(
            segments.topic_shm_name(name, theirs)).close()),
        "token files": [os.path.basename(p) for p in segments.token_files(name)],
        "my token": os.path.basename(token.path),
    }
    try:
        result["removed"] = segments.remove_namespace(name)
    except Exception as e:
        result["removed"] = f"{type(e).__name__}: {e}"
    token.close()
    return result


def make_a_namespace_and_publish(name, topic):
    """As this user: a broker's namespace segment (no supervisor), then one
    message published to topic, whose segment this user makes."""
    from pymq import _core, segments
    seg = segments.Segment.create(segments.ns_shm_name(name), _core.ns_size())
    config = pymq.BrokerConfig(name=name, ring_bytes=65536).to_json().encode()
    _core.Namespace.init(seg, os.getpid(), segments.start_stamp(), 1, config).release()
    c = pymq.connect(name)
    seq = c.publish(topic, b"from its user")
    c.close()
    return seq


def attach_outcome(name, topic):
    """What attaching the topic's segment gives this user."""
    from pymq import segments
    return outcome(lambda: segments.Segment.attach(segments.topic_shm_name(name, topic)).close())


def bulk_publisher(name, topic, pub, count, size, per_batch):
    """Publish count payloads (make_payload, all of one size) with publish_batch,
    per_batch records a call."""
    c = pymq.connect(name)
    for base in range(0, count, per_batch):
        n = min(per_batch, count - base)
        c.publish_batch(topic, b"".join(make_payload(pub, base + k, size) for k in range(n)),
                        record_size=size, timeout=30)
