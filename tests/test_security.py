"""Who may do what (docs/security.md): file and folder modes whatever the
umask; another user, who can open none of a broker's doors and whose files
planted under a broker's names are never used; the control socket's peer
check and limits; the admin token kept out of shared memory and answers;
nothing unpickled or evaluated; hostile JSON from shared
memory, disk or a peer refused with a documented error. "Another user" is a
process the test starts as root and drops to an unused uid (workers.as_user);
without root, those tests are skipped."""

import ast
import grp
import http.client
import itertools
import json
import os
import pathlib
import pwd
import shutil
import socket
import stat
import tempfile
import time

import pytest

import pymq
import workers
from helpers import join_all, sweeps, wait_for
from pymq import _core, control, persistence, segments
from pymq.persistence import LogReport, read_checkpoint, read_log


def unused_ids(n):
    """n numbers that are neither a user's uid nor a group's gid here."""
    ids = []
    for i in itertools.count(40000):
        try:
            pwd.getpwuid(i)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(i)
            continue
        except KeyError:
            pass
        ids.append(i)
        if len(ids) == n:
            return ids


@pytest.fixture
def other_uid():
    if os.geteuid() != 0:
        pytest.skip("running a process as another user needs root (setuid)")
    return unused_ids(1)[0]


def run_as(ctx, uid, job, *args):
    """job(*args) (a function of workers.py) run by user uid (gid the same);
    its result."""
    q = ctx.Queue()
    p = ctx.Process(target=workers.as_user, args=(uid, uid, q, job, *args))
    p.start()
    result = q.get(timeout=60)
    join_all([p])
    assert result[0] == "ok", result
    return result[1]


@pytest.fixture
def open_dir():
    """A folder every user may enter (pytest's tmp_path is root's alone), so
    that what keeps another user out of a folder in it is pymq's own mode."""
    d = tempfile.mkdtemp(prefix="pymq-security-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d)


def persisted(broker, topic):
    g = broker.stats()["topics"][topic]["groups"]["~persist"]
    return g["lag"] == 0 and g["pending"] == 0


def shm_path(name, topic):
    return os.path.join(segments.SHM_DIR, segments.topic_shm_name(name, topic).lstrip("/"))


# -- modes ------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o777], ids=["umask-000", "umask-777"])
def test_files_and_folders_are_owner_only_whatever_the_umask(make_broker, name, tmp_path, umask):
    """Segments, the liveness token and the control socket 0600; the
    persistence folders 0700, and the folders above persistence_dir that
    pymq makes too; log files and groups.json 0600. The umask is the
    Broker's, so the supervisor (which writes the log) inherits it."""
    made = tmp_path / "made"
    pdir = made / "by" / "pymq"
    old = os.umask(umask)
    try:
        broker = make_broker(persistence_enabled=True, persistence_dir=str(pdir),
                             persistence_fsync_interval=0.05)
        sub = broker.subscribe_with_ack("t", group="g")  # a liveness token, a durable group
        broker.publish_many("t", [b"a", b"b"])
        sub.ack_many(sub.get_many(2, timeout=5))
        wait_for(lambda: persisted(broker, "t") and (pdir / "t" / "groups.json").exists())
        entries = {e: os.stat(os.path.join(segments.SHM_DIR, e)).st_mode
                   for e in segments.namespace_entries(name)}
        broker.close()  # the log as it stays: no checkpoint being replaced
    finally:
        os.umask(old)
    tree = {str(p.relative_to(tmp_path)): p.stat().st_mode for p in made.rglob("*")}
    tree["made"] = made.stat().st_mode
    prefix = segments.namespace_prefix(name)
    kinds = sorted("token" if ".proc." in e else e[len(prefix):] for e in entries)
    assert kinds == [".ctl", ".ns", "t", "token", "token"]  # the Broker's, the writer's
    assert {e: stat.S_IMODE(m) for e, m in entries.items()} == {e: 0o600 for e in entries}
    assert [e for e, m in entries.items() if stat.S_ISSOCK(m)] == [prefix + ".ctl"]
    folders = {p: stat.S_IMODE(m) for p, m in tree.items() if stat.S_ISDIR(m)}
    files = {p: stat.S_IMODE(m) for p, m in tree.items() if not stat.S_ISDIR(m)}
    assert folders == {p: 0o700 for p in ("made", "made/by", "made/by/pymq", "made/by/pymq/t")}
    assert sorted(files) == ["made/by/pymq/t/00000000000000000001.jsonl",
                             "made/by/pymq/t/groups.json"]
    assert set(files.values()) == {0o600}


def test_an_existing_persistence_dir_is_made_owner_only_and_its_parents_left_alone(tmp_path):
    above = tmp_path / "shared"
    (above / "mq").mkdir(parents=True)
    os.chmod(above, 0o755)
    os.chmod(above / "mq", 0o755)
    persistence.ensure_dir(str(above / "mq"))
    assert (stat.S_IMODE(above.stat().st_mode), stat.S_IMODE((above / "mq").stat().st_mode)) == \
        (0o755, 0o700)


# -- another user -----------------------------------------------------------------------

def test_another_user_can_open_no_door_of_a_broker_but_sees_its_names(make_broker, name, ctx,
                                                                     open_dir, other_uid):
    """Segments, the token, the control socket and the log are closed to
    another user; the names in /dev/shm (topics, token values) are not."""
    pdir = open_dir / "mq"
    broker = make_broker(persistence_enabled=True, persistence_dir=str(pdir),
                         persistence_fsync_interval=0.05)
    broker.subscribe("t")
    broker.publish("t", b"secret")
    wait_for(lambda: persisted(broker, "t"))
    token = segments.token_files(name)[0]
    log_file = str(pdir / "t" / "00000000000000000001.jsonl")
    got = run_as(ctx, other_uid, workers.try_a_brokers_doors, name, "t", token, log_file)
    assert got == {
        "connect": f"BrokerNotFound: broker '{name}' belongs to another user (permission "
                   "denied): run as its user (docs/security.md)",
        "attach": "PermissionsError: No permission to access this segment",  # the layer below
        "token": f"PermissionError: [Errno 13] Permission denied: '{token}'",
        "control": f"BrokerUnavailable: broker '{name}': its control socket belongs to another "
                   "user (permission denied): run as the broker's user",
        "log": f"PermissionError: [Errno 13] Permission denied: '{log_file}'",
        "names": segments.namespace_entries(name),
    }


def test_another_user_who_connects_gets_a_pymq_error_naming_the_broker(broker, name, ctx,
                                                                       other_uid):
    mro, message = run_as(ctx, other_uid, workers.connect_error, name)
    assert "MQError" in mro and repr(name) in message


def test_the_supervisor_serves_no_peer_of_another_user(broker, name, ctx, other_uid):
    """Past the socket file's own mode (opened to all here), the supervisor
    checks the peer's uid (SO_PEERCRED) and closes the connection unanswered:
    the request is not carried out."""
    broker.subscribe("t", group="g")
    os.chmod(control.path(name), 0o666)
    answer = run_as(ctx, other_uid, workers.control_exchange, control.path(name),
                    {"op": "delete_group", "topic": "t", "group": "g"})
    assert answer == b""
    assert "g" in broker.stats()["topics"]["t"]["groups"]
    assert control.request(name, "ping")["pid"] == broker.supervisor_pid


def test_a_brokers_names_taken_by_another_user_are_not_used(make_broker, name, ctx, other_uid):
    """/dev/shm is writable by all: another user can make a valid topic
    segment (open to all) or a file named like a liveness token before the
    broker's processes do. A segment of another user is SegmentMismatch, not
    a ring to publish into; a token file of another user is not reaped. The
    broker goes on with its other topics (root's close() removes them)."""
    broker = make_broker()
    sub = broker.subscribe("t")
    cfg = broker.config
    run_as(ctx, other_uid, workers.plant_topic, name, "planted", cfg.ring_capacity,
           cfg.max_message_bytes)
    token = run_as(ctx, other_uid, workers.plant_token, name, 0x1234)
    assert os.stat(shm_path(name, "planted")).st_mode & 0o777 == 0o666
    want = (f"/pymq.{name}.planted belongs to uid {other_uid}, not to the broker's user "
            f"\\(uid 0\\): another user made it in /dev/shm, and pymq does not use it")
    with pytest.raises(pymq.SegmentMismatch, match=want):
        broker.publish("planted", b"secret")
    with pytest.raises(pymq.SegmentMismatch, match=want):
        broker.subscribe("planted")
    with open(shm_path(name, "planted"), "rb") as f:
        assert b"secret" not in f.read()
    sweeps(broker)
    assert broker.stats()["reaped_processes"] == 0 and os.path.exists(token)
    broker.publish("t", b"x")
    assert sub.get(timeout=5) == b"x"


def test_a_user_uses_and_removes_only_its_own_files_of_a_broker(name, ctx, other_uid):
    """As a user who is not root: its own segment attaches; one of another
    user's (root's here, open to all) is SegmentMismatch; token files are its
    own only; remove_namespace removes its own and leaves the others (it
    could not remove them from sticky /dev/shm anyway), without raising."""
    theirs = shm_path(name, "theirs")
    their_token = segments.token_path(name, 0x5678)
    for path in (theirs, their_token):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)
        os.ftruncate(fd, 4096)
        os.close(fd)
    try:
        got = run_as(ctx, other_uid, workers.own_files_among_others, name, "theirs")
    finally:
        left = segments.namespace_entries(name)
        segments.remove_namespace(name)
    mine = got.pop("my token")
    assert got == {
        "attach mine": "ok",
        "attach theirs": f"SegmentMismatch: /pymq.{name}.theirs belongs to uid 0, not to the "
                         f"broker's user (uid {other_uid}): another user made it in /dev/shm, "
                         "and pymq does not use it",
        "token files": [mine],
        "removed": sorted([f"pymq.{name}.mine", mine]),
    }
    assert left == sorted(os.path.basename(p) for p in (theirs, their_token))


def test_root_may_look_at_another_users_broker_and_what_it_makes_there_is_roots(name, ctx,
                                                                                  other_uid):
    """For root, a broker's files are those of its namespace's owner: it reads
    another user's broker. A topic root makes there is root's (0600), which
    that user cannot open."""
    try:
        assert run_as(ctx, other_uid, workers.make_a_namespace_and_publish, name, "t") == 1
        c = pymq.connect(name)
        assert c.stats()["topics"]["t"]["published"] == 1
        assert c.subscribe("t", start="earliest").get(timeout=5) == b"from its user"
        c.publish("roots", b"x")
        c.close()
        assert run_as(ctx, other_uid, workers.attach_outcome, name, "roots") == \
            "PermissionsError: No permission to access this segment"
    finally:
        segments.remove_namespace(name)


# -- the control socket's limits ----------------------------------------------------------

def test_a_control_request_over_its_size_limit_is_refused(broker, name):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(control.path(name))
        s.sendall(b"x" * (control.MAX_LINE + 1))  # no end of line within the limit
        answer = json.loads(s.makefile().readline())
    assert answer == {"ok": False, "error": "MQError",
                      "message": f"bad request: a line over {control.MAX_LINE} bytes"}
    assert control.request(name, "ping")["pid"] == broker.supervisor_pid


def test_a_silent_control_peer_is_dropped_after_the_io_timeout(name, monkeypatch):
    """Requests are served one at a time: a peer that sends nothing holds the
    next one back, for IO_TIMEOUT at most, then gets an error and is closed."""
    monkeypatch.setattr(control, "IO_TIMEOUT", 0.3)
    server = control.ControlServer(name, lambda req: {"pid": 7})
    try:
        with socket.socket(socket.AF_UNIX) as silent:
            silent.connect(server.path)
            t0 = time.monotonic()
            assert control.request(name, "ping", timeout=10) == {"ok": True, "pid": 7}
            waited = time.monotonic() - t0
            silent.settimeout(10)
            assert json.loads(silent.makefile().readline()) == {
                "ok": False, "error": "MQError", "message": "bad request: timed out"}
    finally:
        server.close()
    assert waited > 0.2  # it waited for the silent one's timeout (started at its accept)


def test_a_control_request_past_its_deadline_is_not_carried_out(broker, name):
    """One that waited past its deadline (CLOCK_MONOTONIC, the machine's) is
    dropped unanswered: nothing happens late, nor from a replayed request."""
    broker.subscribe("t", group="g")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(control.path(name))
        s.sendall(json.dumps({"op": "delete_group", "topic": "t", "group": "g",
                              "deadline": time.monotonic() - 1}).encode() + b"\n")
        assert s.makefile("rb").read() == b""
    assert "g" in broker.stats()["topics"]["t"]["groups"]


# -- the admin token ------------------------------------------------------------------------

def test_the_admin_token_is_in_no_segment_and_no_answer(make_broker, name, monkeypatch):
    """PYMQ_ADMIN_TOKEN lives in the environment of the Broker's process and
    its supervisor: it is not part of the config in the namespace segment,
    and no answer of the admin server carries it."""
    token = "Tok3n-0f-th1s-test"
    monkeypatch.setenv("PYMQ_ADMIN_TOKEN", token)
    broker = make_broker(admin_port=0)
    broker.publish("t", b"x")
    for entry in segments.namespace_entries(name):
        if ".ctl" not in entry:
            with open(os.path.join(segments.SHM_DIR, entry), "rb") as f:
                assert token.encode() not in f.read(), entry
    auth = {"Authorization": f"Bearer {token}"}
    for path in ("/", "/health", "/stats", "/stats/t", "/metrics", "/history"):
        conn = http.client.HTTPConnection("127.0.0.1", broker.admin_port, timeout=10)
        try:
            conn.request("GET", path, headers=auth)
            r = conn.getresponse()
            assert r.status == 200 and token.encode() not in r.read() + bytes(r.headers), path
        finally:
            conn.close()


# -- nothing evaluated ----------------------------------------------------------------------

UNPICKLERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
              "jsonpickle", "yaml", "copyreg"}
EVALUATORS = {"eval", "exec", "compile", "__import__", "execfile"}
OS_RUNNERS = {"system", "popen", "execv", "execve", "execl", "execlp", "execvp", "execvpe",
              "spawnv", "spawnve", "spawnl", "spawnlp", "spawnvp", "spawnvpe", "posix_spawn"}


def test_no_module_unpickles_or_evaluates_anything():
    """No module of pymq imports an unpickler, calls eval/exec/compile/
    __import__, runs a shell, or hands os a command; multiprocessing (whose
    pipes carry pickles) is only the demo's and the bench's (and cliutil's
    helpers for their processes), between the processes of one run."""
    root = pathlib.Path(pymq.__file__).parent
    found, spawners = [], set()
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for m in modules:
                if m.split(".")[0] in UNPICKLERS:
                    found.append((where, "import " + m))
                if m.split(".")[0] == "multiprocessing":
                    spawners.add(where)
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in EVALUATORS:
                found.append((where, f.id))
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                    f.value.id == "os" and f.attr in OS_RUNNERS:
                found.append((where, "os." + f.attr))
            found += [(where, "shell=") for kw in node.keywords if kw.arg == "shell"]
    assert found == []
    assert sorted(spawners) == ["bench.py", "cliutil.py", "demo/__init__.py", "demo/collector.py",
                                "demo/streamer.py"]


# -- hostile JSON -------------------------------------------------------------------------

DEEP = b"[" * 2048 + b"]" * 2048  # RecursionError for json.loads, not ValueError


@pytest.mark.parametrize("config", [
    DEEP, b"\xff\xfe not UTF-8", b"not JSON", b'"a string"', b'{"ring_bytes": true}',
    b'{"ack_timeout": NaN}', b'{"publish_timeout": Infinity}', b'{"__class__": "os.system"}',
    b'{"name": "../../etc"}', b'{"max_message_bytes": 1099511627776}',
], ids=["deep", "not-utf8", "not-json", "a-string", "bool-for-int", "nan", "infinity",
        "unknown-field", "bad-name", "too-large"])
def test_a_namespace_whose_config_is_not_valid_is_a_segment_mismatch(name, config):
    """The config a client reads from shared memory is validated: anything
    but a valid BrokerConfig is SegmentMismatch."""
    seg = segments.Segment.create(segments.ns_shm_name(name), _core.ns_size())
    _core.Namespace.init(seg, os.getpid(), segments.start_stamp(), 1, config).release()
    try:
        with pytest.raises(pymq.SegmentMismatch, match=f"broker '{name}': bad config in shared "
                           "memory"):
            pymq.connect(name)
    finally:
        segments.remove_namespace(name)


def test_a_token_file_that_is_not_a_json_object_says_nothing(tmp_path):
    for raw in (DEEP, b"\xff", b"[1]", b'{"pid": "1"'):
        path = tmp_path / "token"
        path.write_bytes(raw)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert segments.read_token_info(fd) == {}
        finally:
            os.close(fd)


@pytest.mark.parametrize("state", [
    DEEP, b"[]", b'{"groups": [], "next_seq": true}',
    b'{"groups": [], "next_seq": 18446744073709551616}',
    b'{"groups": [{"name": "g", "ack": true, "position": true, "acked": []}], "next_seq": 1}',
    b'{"groups": [{"name": "g", "ack": 1, "position": 1, "acked": []}], "next_seq": 1}',
    b'{"groups": [{"name": "g", "ack": true, "position": 1, "acked": [-1]}], "next_seq": 1}',
    b'{"groups": [{"name": "../g", "ack": true, "position": 1, "acked": []}], "next_seq": 1}',
    b'{"groups": [{"name": "\\ud800", "ack": true, "position": 1, "acked": []}], "next_seq": 1}',
], ids=["deep", "a-list", "bool-next-seq", "huge-next-seq", "bool-position", "int-for-bool",
        "negative-acked", "bad-name", "surrogate-name"])
def test_group_positions_on_disk_that_are_not_valid_are_a_persistence_error(tmp_path, state):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "groups.json").write_bytes(state)
    with pytest.raises(pymq.PersistenceError, match="unreadable group positions"):
        read_checkpoint(str(tmp_path), "t")


def test_log_lines_that_are_not_valid_are_reported_and_skipped(tmp_path):
    good = [b'{"seq": 1, "ts": 1.5, "payload": "YQ=="}', b'{"seq": 5, "ts": 2, "payload": ""}']
    bad = [DEEP, b'{"seq": 2, "ts": NaN, "payload": ""}', b'{"seq": 3, "ts": 1e300, "payload": ""}',
           b'{"seq": 9223372036854775808, "ts": 1, "payload": ""}',
           b'{"seq": 4, "ts": 1, "payload": "\\u00e9"}', b'{"seq": true, "ts": 1, "payload": ""}']
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "00000000000000000001.jsonl").write_bytes(
        b"\n".join([good[0], *bad, good[1]]) + b"\n")
    report = LogReport()
    assert list(read_log(str(tmp_path), "t", 1, report)) == [(1, 1_500_000_000, b"a"),
                                                             (5, 2_000_000_000, b"")]
    assert (report.records, report.corrupt) == (2, len(bad))
    assert [p.split(":")[1] for p in report.problems] == ["2", "3", "4", "5", "6", "7"]


def test_a_control_request_that_is_not_a_json_object_is_a_bad_request(broker, name):
    for line in (DEEP, b"\xff", b"[]", b'{"op": 5}'):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(control.path(name))
            s.sendall(line + b"\n")
            answer = json.loads(s.makefile().readline())
        assert answer["ok"] is False and answer["message"].startswith("bad request"), line
    assert control.request(name, "ping")["pid"] == broker.supervisor_pid
