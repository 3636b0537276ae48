"""The Redis broker: RedisLogHandler, the sinks (RedisSink, ClusterSink and
write_batch.lua) and the clients (connection pools, topology: single node,
Cluster, Sentinel)."""
