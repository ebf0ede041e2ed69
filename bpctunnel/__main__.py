"""python -m bpctunnel: the bpctunnel command."""

from bpctunnel.cli import main

main()
