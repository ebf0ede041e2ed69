"""
Fixtures for the system tests: a Debian 12 booted with systemd as PID 1.

``debian_rootfs`` (session): the cached rootfs path, built on first use (its
progress goes to the terminal, not to pytest's capture: the first build takes
minutes).  ``debian_container`` (module): a container booted from it, shared
by the tests of one module and thrown away afterwards.  A test that needs a
pristine machine of its own can do ``with nspawn.Container(debian_rootfs) as
ct: ...``.

Missing host tools or a non-root run FAIL the tests (never skip): see
``nspawn.MissingTool``.
"""

import pytest

from . import nspawn


def _fail_if_tools_missing(*tools):
    try:
        nspawn.require_tools(*tools)
    except nspawn.MissingTool as e:
        message = str(e)
    else:
        return
    pytest.fail(message, pytrace=False)  # a failure, never a skip


@pytest.fixture(scope="session")
def debian_rootfs(pytestconfig):
    _fail_if_tools_missing("systemd-nspawn", "debootstrap", "nsenter")
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return nspawn.ensure_rootfs()
    # The first build takes a minute or more: show its progress.
    with capman.global_and_fixture_disabled():
        return nspawn.ensure_rootfs()


@pytest.fixture(scope="module")
def debian_container(debian_rootfs):
    with nspawn.Container(debian_rootfs) as ct:
        yield ct
