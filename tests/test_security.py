"""Who may do what (docs/security.md): file and folder modes whatever the
umask."""

import os
import stat

import pytest

from helpers import wait_for
from pymq import segments


def persisted(broker, topic):
    g = broker.stats()["topics"][topic]["groups"]["~persist"]
    return g["lag"] == 0 and g["pending"] == 0


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
