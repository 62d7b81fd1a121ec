"""The MSRP relay (RFC 4976): listeners, AUTH, sessions, chunk-by-chunk forwarding."""
