"""Policies as YAML resources (contract section 6)."""
