"""The broker-independent shipping layer: ShippingHandler (the caller's side),
Shipper and its delivery loop (the worker thread), exit and fork handling,
the wire encoder and the library's own diagnostics.  Nothing here knows Redis
or AMQP: a shipper drives any sink with ``write(batch)``."""
