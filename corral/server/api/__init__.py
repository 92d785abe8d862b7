"""HTTP API routes, one module per domain."""
