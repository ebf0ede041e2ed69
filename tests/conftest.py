"""
The suite's order: the system tests (tests/system, plain pytest functions
that boot a container) run after the rest.

Most of the suite is trial TestCases, which run the reactor themselves.  A
plain pytest function that runs first makes pytest-twisted start the reactor
in its own greenlet, and every trial TestCase after it then fails with
"Reactor was unclean".  Slow tests last is also the better order to wait on.
"""


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: "/tests/system/" in str(item.path))
