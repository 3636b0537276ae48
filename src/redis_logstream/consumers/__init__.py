"""Processing records, not only watching them: the callback contract (Nack,
Drop, HaltConsumer, Forward, LogEntry), the callback runner and the Redis
consumer-group consumer (consumer, groups).

Importing this package loads only the contract.
"""

from redis_logstream.consumers.contract import Drop, Forward, HaltConsumer, LogEntry, Nack

__all__ = ["Drop", "Forward", "HaltConsumer", "LogEntry", "Nack"]
