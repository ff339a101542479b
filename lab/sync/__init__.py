"""Sync-period techniques, one module each."""
