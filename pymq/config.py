"""BrokerConfig: the settings of one broker, from code or the environment."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ._core import MAX_RETRIES
from .errors import InvalidName, InvalidTopic

TOPIC_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,199}")
BROKER_RE = re.compile(r"[A-Za-z0-9_\-]{1,32}")
GROUP_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,46}")

MiB = 1024 * 1024


DLQ_SUFFIX = ".dlq"
TOPIC_MAX_WITH_DLQ = 216  # what a segment name can hold: /pymq.<32>.<216> is 255


def check_topic(topic: str) -> str:
    """Return topic if it is a valid name: 1-200 of A-Z a-z 0-9 . _ -, not
    starting with '.'; the dead-letter topic '{topic}.dlq' (and its own, ...)
    of any valid topic is valid too."""
    base = topic
    if isinstance(topic, str) and len(topic) <= TOPIC_MAX_WITH_DLQ:
        while base.endswith(DLQ_SUFFIX) and len(base) > 200:
            base = base[:-len(DLQ_SUFFIX)]
    if not isinstance(topic, str) or len(topic) > TOPIC_MAX_WITH_DLQ or not TOPIC_RE.fullmatch(base):
        raise InvalidTopic(f"invalid topic name {topic!r}: 1 to 200 characters of "
                           "A-Z a-z 0-9 . _ -, not starting with '.' (plus '.dlq' suffixes)")
    return topic


def check_broker_name(name: str) -> str:
    """Return name if it is a valid broker name, else raise InvalidName."""
    if not isinstance(name, str) or not BROKER_RE.fullmatch(name):
        raise InvalidName(f"invalid broker name {name!r}: 1 to 32 characters of A-Z a-z 0-9 _ -")
    return name


def check_group(group: str) -> str:
    """Return group if it is a valid group name, else raise InvalidName."""
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise InvalidName(f"invalid group name {group!r}: 1 to 47 characters of "
                          "A-Z a-z 0-9 . _ -, not starting with '.'")
    return group


def default_name(environ: Mapping[str, str] | None = None) -> str:
    """The broker name when none is given: $PYMQ_NAME, else "pymq"."""
    return (os.environ if environ is None else environ).get("PYMQ_NAME") or "pymq"


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _kind(f: "dataclasses.Field[Any]") -> tuple[type, bool]:
    """A field's value type, and whether it may be None (from its annotation:
    "int", "float | None", ...)."""
    names = [t.strip() for t in str(f.type).split("|")]
    base = {"bool": bool, "int": int, "float": float, "str": str}[names[0]]
    return base, "None" in names


@dataclasses.dataclass
class BrokerConfig:
    """Settings of one broker. Each field is also read by from_env() from PYMQ_<FIELD>."""

    name: str = "pymq"
    persistence_enabled: bool = False
    persistence_dir: str = "/data/mq"
    ack_timeout: float = 30.0
    max_retries: int = 3
    ring_bytes: int = 8 * MiB
    max_message_bytes: int | None = None  # None: 1 MiB, or less to fit a small ring
    publish_timeout: float = 5.0
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    # persistence details (beyond the seed's two switches)
    persistence_segment_bytes: int = 64 * MiB      # a new log file past this size
    persistence_retention_bytes: int = 1024 * MiB  # per topic; oldest files go first
    persistence_retention_seconds: float = 7 * 24 * 3600.0
    persistence_fsync: str = "interval"            # never | interval | always
    persistence_fsync_interval: float = 1.0
    # close() waits this long for the writers to put what was published on
    # disk, then raises PersistenceError with the count of what is not
    persistence_close_timeout: float = 10.0
    # named groups with no member: reported on /health past this many seconds
    # (None: never), and deleted then when group_idle_expire is set
    group_idle_timeout: float | None = None
    group_idle_expire: bool = False

    def __post_init__(self) -> None:
        check_broker_name(self.name)
        if not isinstance(self.ring_bytes, int) or not 4096 <= self.ring_bytes <= 1 << 40:
            raise ValueError(f"ring_bytes must be an int from 4096 to 2**40, not {self.ring_bytes!r}")
        if self.max_message_bytes is None:
            self.max_message_bytes = min(1 * MiB, self.ring_capacity // 2 - 32)
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be a positive int, not {self.max_message_bytes!r}")
        if self.max_message_bytes + 32 > self.ring_capacity // 2:
            raise ValueError(f"max_message_bytes ({self.max_message_bytes}) must be at most half "
                             f"the ring ({self.ring_capacity} bytes) less 32")
        for field, least in (("ack_timeout", 0.001), ("publish_timeout", 0)):
            value = getattr(self, field)  # finite: it becomes int64 nanoseconds
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not least <= value < 2**63 / 1e9:
                raise ValueError(f"{field} must be a number >= {least} (seconds, finite), "
                                 f"not {value!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or \
                not 0 <= self.max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be an int from 0 to {MAX_RETRIES}, "
                             f"not {self.max_retries!r}")
        if self.persistence_fsync not in ("never", "interval", "always"):
            raise ValueError(f"persistence_fsync must be never, interval or always, "
                             f"not {self.persistence_fsync!r}")
        for field in ("persistence_segment_bytes", "persistence_retention_bytes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive int, not {value!r}")
        for field in ("persistence_retention_seconds", "persistence_fsync_interval",
                      "persistence_close_timeout"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not 0 < value < 2**63 / 1e9:
                raise ValueError(f"{field} must be a number > 0 (seconds, finite), not {value!r}")
        if self.group_idle_timeout is not None and (
                not isinstance(self.group_idle_timeout, (int, float))
                or isinstance(self.group_idle_timeout, bool)
                or not 0 < self.group_idle_timeout < 2**63 / 1e9):
            raise ValueError(f"group_idle_timeout must be a number > 0 (seconds, finite) or None, "
                             f"not {self.group_idle_timeout!r}")
        if self.group_idle_expire and self.group_idle_timeout is None:
            raise ValueError("group_idle_expire needs a group_idle_timeout")
        if self.admin_port is not None and not 0 <= int(self.admin_port) <= 65535:
            raise ValueError(f"admin_port must be in 0..65535, not {self.admin_port!r}")

    @property
    def ring_capacity(self) -> int:
        """ring_bytes rounded up to a power of two: the data bytes of each topic's ring."""
        return 1 << (self.ring_bytes - 1).bit_length()

    _PARSERS: ClassVar[dict[type, Callable[[str], Any]]] = {bool: _bool, int: int, float: float,
                                                         str: str}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> "BrokerConfig":
        """Defaults, then PYMQ_<FIELD> variables, then keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get("PYMQ_" + f.name.upper())
            if raw is None:
                continue
            base, optional = _kind(f)
            try:
                text = raw.strip()
                values[f.name] = None if optional and text.lower() in ("", "none") \
                    else cls._PARSERS[base](text)
            except ValueError as e:
                raise ValueError(f"PYMQ_{f.name.upper()}={raw!r}: {e}") from None
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BrokerConfig":
        """Parse and validate a config stored in shared memory (never trusted):
        ValueError for anything but a valid config."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("config nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("config is not a JSON object")
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            f = names.get(key)
            if f is None:
                raise ValueError(f"unknown config field {key!r}")
            base, optional = _kind(f)
            if value is None and optional:
                continue
            want = (int, float) if base is float else base
            if not isinstance(value, want) or (isinstance(value, bool) and base is not bool):
                raise ValueError(f"config field {key!r} has the wrong type")
        return cls(**data)


def default_broker_config() -> BrokerConfig:
    """The defaults, as the seed's DefaultBrokerConfig()."""
    return BrokerConfig()
