"""Durable group positions: per topic, {persistence_dir}/{topic}/groups.json,
replaced atomically (write, fsync, rename), holding each named group's
position (its oldest unacked record; a plain group: the next to deliver) and
the seqs acked after it: what a restart needs to deliver again exactly what
was not acked.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .. import _core
from ..config import GROUP_RE
from ..errors import MQError, PersistenceError
from .log import ensure_dir, topic_dir

CHECKPOINT = "groups.json"


def group_positions(ring: _core.Ring) -> dict[str, Any]:
    """The durable state of a topic's named groups (what a restart restores)."""
    figures = ring.stats()
    groups = []
    for g in figures["groups_detail"]:
        if g["anonymous"] or g["name"] == _core.PERSIST_GROUP:
            continue
        try:
            position, acked = ring.group_position(g["index"])
        except MQError:
            continue  # gone meanwhile
        groups.append({"name": g["name"], "ack": g["ack"], "position": position, "acked": acked})
    return {"version": 1, "next_seq": figures["next_seq"], "groups": groups}


def write_checkpoint(root: str, topic: str, state: dict[str, Any], fsync: bool) -> None:
    """Atomically replace {topic}/groups.json (write, fsync, rename)."""
    d = topic_dir(root, topic)
    ensure_dir(d)
    tmp = os.path.join(d, CHECKPOINT + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, json.dumps(state, separators=(",", ":")).encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(d, CHECKPOINT))


def _group_name(x: Any) -> bool:
    """A group name (config.GROUP_RE), or one of pymq's own ('~' and one)."""
    return isinstance(x, str) and len(x) <= 47 and bool(
        GROUP_RE.fullmatch(x[1:] if x.startswith("~") else x))


def _seq(x: Any) -> bool:
    """A seq as a ring holds one: an int (not a bool) in 1 .. 2**63 - 1."""
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x < 2**63


def read_checkpoint(root: str, topic: str) -> dict[str, Any] | None:
    """groups.json, validated; None if absent. PersistenceError if unusable:
    anything but group names, kinds and seqs of the right types and ranges."""
    path = os.path.join(topic_dir(root, topic), CHECKPOINT)
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read(4 << 20))
        groups = state["groups"]
        for g in groups:
            if not (_group_name(g["name"]) and isinstance(g["ack"], bool) and _seq(g["position"])
                    and isinstance(g["acked"], list) and all(_seq(s) for s in g["acked"])):
                raise ValueError("bad group entry")
            if g["name"] == _core.PERSIST_GROUP:
                raise ValueError(f"{g['name']!r} is made afresh at each restart")
        if len({g["name"] for g in groups}) != len(groups):
            raise ValueError("a group named twice")
        if not _seq(state["next_seq"]):
            raise ValueError("bad next_seq")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise PersistenceError(f"{path}: unreadable group positions: {e}") from None
