"""The licensing domain with no I/O and no clock: network keys, the seat pool, the service."""
