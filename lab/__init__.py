"""commlab's science: rank-stacked torch implementations of communication-efficient training techniques.

Importing `lab` sets torch's CPU threads once for the process (`lab.threads`).
"""
from lab.threads import configure as _configure_threads

_configure_threads()
