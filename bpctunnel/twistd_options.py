"""
What our twistd plugins' options share: errors as one line (not after the
whole C{--help}), and no pidfile where one cannot be written.
"""

from __future__ import annotations

import os
import sys

from twisted.python import usage

#: twistd's own default for --pidfile.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"


class PluginOptions(usage.Options):
    """
    Options of a C{twistd} plugin named L{command}.

    twistd answers a L{usage.UsageError} by printing the whole C{--help} and
    then the error, so the one line that matters scrolls away (or is buried
    in the journal); these options print the error alone and exit 2.
    """

    command = "bpctunnel"

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twistd {self.command}: {e}\n"
                             f"(twistd {self.command} --help lists the options)\n")
            raise SystemExit(2) from None
        self._no_unwritable_pidfile()

    def _no_unwritable_pidfile(self) -> None:
        """
        twistd writes twistd.pid to the current folder unless told
        C{--pidfile=}; in a folder it may not write (/, a service's home)
        that failed after start-up with a traceback.  Then write none.
        """
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("pidfile") != TWISTD_DEFAULT_PIDFILE:
            return
        if not writable(os.getcwd()):
            parent["pidfile"] = ""


def writable(folder: str) -> bool:
    """Whether this process may create files in C{folder}."""
    return os.access(folder, os.W_OK)
