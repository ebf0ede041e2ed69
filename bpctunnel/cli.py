"""
The C{bpctunnel} command: C{bpctunnel demo} and the admin tools.
"""

from __future__ import annotations

import sys

from twisted.python import usage

import bpctunnel


class DemoOptions(usage.Options):
    """Options of C{bpctunnel demo}."""

    synopsis = "bpctunnel demo [--keep]"
    longdesc = (
        "Makes a throwaway CA and BackupPC config, starts a tunnel server and client on "
        "127.0.0.1, pulls a module through the tunnel with the real rsync, checks every "
        "file arrived intact, and cleans up.  Exits 0 on success."
    )
    optFlags = [
        ["keep", "k", "Keep the temporary folder for a look afterwards."],
        ["verbose", "v", "Show the server's and client's log as well."],
    ]


class Options(usage.Options):
    """Top-level options of C{bpctunnel}."""

    synopsis = "bpctunnel COMMAND [options]"
    subCommands = [
        ["demo", None, DemoOptions, "Run the whole tunnel on this machine and show it works."],
    ]
    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"bpctunnel {bpctunnel.__version__}")
        sys.exit(0)

    opt_V = opt_version

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command; see bpctunnel --help")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"bpctunnel: {e}", file=sys.stderr)
        sys.exit(2)
    if options.subCommand == "demo":
        from twisted.internet import task

        from bpctunnel.demo import main as demo_main

        task.react(demo_main, (options.subOptions["keep"], options.subOptions["verbose"]))


if __name__ == "__main__":
    main()
