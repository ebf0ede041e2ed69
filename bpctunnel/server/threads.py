"""
Where the server's blocking file work runs: never on the reactor thread.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool


def in_thread(reactor) -> Callable[..., Deferred]:
    """
    C{run(f, *args) -> Deferred}: C{f(*args)} in C{reactor}'s thread pool,
    or at once if C{reactor} has none (a test's C{Clock}).
    """
    if IReactorThreads.providedBy(reactor):
        return lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    return maybeDeferred
