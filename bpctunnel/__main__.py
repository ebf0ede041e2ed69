"""python -m bpctunnel: the bpctunnel command."""

from bpctunnel.admin.cli import main

main()
