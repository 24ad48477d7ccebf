"""The exception tree. MQError is the root and is never raised itself."""

import builtins


class MQError(Exception):
    """Root of every pymq error."""


class BrokerNotFound(MQError):
    """No broker of that name is running on this machine."""


class BrokerClosed(MQError):
    """The broker was closed: nothing more can be published or received."""


class SubscriptionClosed(MQError):
    """This subscription was unsubscribed (or its process was reaped)."""


class Timeout(MQError):
    """Nothing arrived within the timeout."""


class Full(MQError):
    """publish could not get ring space within its timeout."""


class MessageTooLarge(MQError, builtins.ValueError):
    """A payload above max_message_bytes, or a batch larger than the ring."""


class InvalidTopic(MQError, builtins.ValueError):
    """A topic (or group, or broker) name outside the allowed characters or length."""


class SegmentMismatch(MQError):
    """A segment of another layout version, or with a corrupt header or record."""
