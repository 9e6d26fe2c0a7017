"""The wire protocol with no I/O: framing, messages and the connection state machine."""
