"""The exception tree. MQError is the root and is never raised itself: every
failure has a class of its own, and its message names the size, limit, time or
name involved. Where a builtin exception means the same, a class is also that
builtin (PyNaCl's way), so `except ValueError` and `except TimeoutError` work.

    MQError
    ├── BrokerNotFound         no broker of that name runs here
    ├── BrokerExists           a live broker already owns the name
    ├── BrokerClosed           the broker closed (or was replaced by a new one)
    ├── BrokerUnavailable      the supervisor did not answer a request in time
    ├── SubscriptionClosed     unsubscribed, reaped, or its group or topic deleted
    ├── Timeout (TimeoutError) nothing arrived within the timeout
    ├── Full                   no ring space within the publish timeout
    ├── MessageTooLarge (ValueError)
    ├── InvalidName (ValueError)       a broker or group name
    │   └── InvalidTopic                   a topic name
    ├── GroupKindMismatch (ValueError) a group joined with the other kind of subscribe
    ├── LimitExceeded          no slot for another group or subscription on a topic
    ├── TopicNotFound (LookupError)
    ├── GroupNotFound (LookupError)
    ├── SegmentMismatch        a segment of another layout, or corrupt
    ├── SupervisorFailed       the supervisor process could not start
    ├── StorageFull (OSError)  /dev/shm or the persistence disk has no room
    ├── PersistenceError (OSError)     the log or group positions cannot be used
    └── NativeError (OSError)  a system call of the native core failed (errno)
"""

import builtins


class MQError(Exception):
    """Root of every pymq error; never raised itself."""


class BrokerNotFound(MQError):
    """No broker of that name is running on this machine."""


class BrokerExists(MQError):
    """A live broker already owns that name."""


class BrokerClosed(MQError):
    """The broker was closed, or replaced by a new broker of the same name:
    nothing more can be published or received through this client."""


class BrokerUnavailable(MQError):
    """The broker's supervisor did not answer a request (delete, admin server)
    in time: it is restarting, or the broker is stopping."""


class SubscriptionClosed(MQError):
    """This subscription was unsubscribed, its process reaped, or its group or
    topic deleted."""


class Timeout(MQError, builtins.TimeoutError):
    """Nothing arrived within the timeout."""


class Full(MQError):
    """publish could not get ring space within its timeout."""


class MessageTooLarge(MQError, builtins.ValueError):
    """A payload above max_message_bytes, or a batch larger than the ring."""


class InvalidName(MQError, builtins.ValueError):
    """A broker, group or topic name outside the allowed characters or length."""


class InvalidTopic(InvalidName):
    """A topic name outside the allowed characters or length."""


class GroupKindMismatch(MQError, builtins.ValueError):
    """A named group made by subscribe() joined with subscribe_with_ack(), or
    the other way round."""


class LimitExceeded(MQError):
    """A topic has no room for another group, ack group or subscription."""


class TopicNotFound(MQError, builtins.LookupError):
    """No topic of that name exists."""


class GroupNotFound(MQError, builtins.LookupError):
    """The topic has no named group of that name."""


class SegmentMismatch(MQError):
    """A segment of another layout version, or with a corrupt header or record."""


class SupervisorFailed(MQError):
    """The broker's supervisor process exited at start, or did not start in time."""


class StorageFull(MQError, builtins.OSError):
    """/dev/shm, or the disk under persistence_dir, has no room for what was
    asked; the message names the path and the size."""


class PersistenceError(MQError, builtins.OSError):
    """The persistence folder, a log file or the group positions cannot be
    written or read (the message names the path)."""


class NativeError(MQError, builtins.OSError):
    """A system call of the native core failed; errno says which failure."""
