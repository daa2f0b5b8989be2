"""What the gateway tells operators: the audit stream (metrics and logs follow)."""
