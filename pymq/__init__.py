"""pymq: a message broker for processes on one machine, over shared memory.

Linux only: it needs futexes, robust process-shared mutexes and /dev/shm.
The library logs through logging.getLogger("pymq") and never prints: attach a
handler (or run `pymq serve`, which does) to see what it says.
"""

import logging

from .batch import AckBatch, Batch
from .broker import Broker
from .client import AckSubscription, Client, Message, Subscription, connect
from .config import BrokerConfig, default_broker_config
from .errors import (BrokerClosed, BrokerExists, BrokerNotFound, BrokerUnavailable, Full,
                     GroupKindMismatch, GroupNotFound, InvalidName, InvalidTopic, LimitExceeded,
                     MessageTooLarge, MQError, NativeError, PersistenceError, SegmentMismatch,
                     StorageFull, SubscriptionClosed, SupervisorFailed, Timeout, TopicNotFound)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.2.0"

__all__ = [
    "AckBatch", "AckSubscription", "Batch", "Broker", "BrokerClosed", "BrokerConfig", "BrokerExists", "BrokerNotFound",
    "BrokerUnavailable", "Client", "Full", "GroupKindMismatch", "GroupNotFound", "InvalidName",
    "InvalidTopic", "LimitExceeded", "Message", "MessageTooLarge", "MQError", "NativeError",
    "PersistenceError", "SegmentMismatch", "StorageFull", "Subscription", "SubscriptionClosed",
    "SupervisorFailed", "Timeout", "TopicNotFound", "connect", "default_broker_config",
]
