"""The request log as data: the v1 format, reading other gateways' logs, import into and export from the store."""
