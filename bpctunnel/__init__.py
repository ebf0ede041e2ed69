"""bpctunnel: a reverse tunnel that lets BackupPC back up hosts it cannot reach."""

__version__ = "0.1.0"
