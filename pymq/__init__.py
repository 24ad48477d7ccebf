"""pymq: a message broker for processes on one machine, over shared memory."""

from .broker import Broker
from .client import AckSubscription, Client, Message, Subscription, connect
from .config import BrokerConfig, default_broker_config
from .errors import (BrokerClosed, BrokerNotFound, Full, InvalidTopic, MessageTooLarge, MQError,
                     SegmentMismatch, SubscriptionClosed, Timeout)

__version__ = "0.1.0"

__all__ = [
    "AckSubscription", "Broker", "BrokerClosed", "BrokerConfig", "BrokerNotFound", "Client", "Full", "InvalidTopic",
    "Message", "MessageTooLarge", "MQError", "SegmentMismatch", "Subscription",
    "SubscriptionClosed", "Timeout", "connect", "default_broker_config",
]
