"""
The package's layers (README, Layout): a module imports only from its own
layer or from layers below it, so the wire protocol never learns of sockets and
the server never of the laptop.
"""

import ast
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import bpctunnel

PACKAGE = Path(bpctunnel.__file__).parent

#: Bottom first.  The top-level modules (errors, refusals, pki,
#: twistd_options) are the base every layer may use.
LAYERS = ["", "wire", "transport", "backuppc", "server", "client", "admin", "testing"]

#: Where a layer may reach sideways or up, and why.
ALLOWED = {
    # backup-now and the demo print the client's advice and drive a client.
    ("admin", "client"), ("admin", "server"), ("admin", "testing"),
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return ""


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bpctunnel":
                found.update(f"bpctunnel.{alias.name}" for alias in node.names)
            elif node.module.startswith("bpctunnel."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bpctunnel."))
    return found


def wrong_imports(package: Path) -> list[str]:
    """Every import in C{package} of a layer above the importer's own."""
    wrong = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        if module == "bpctunnel.__main__":
            continue  # python -m bpctunnel: the command, above every layer
        mine = layer_of(module)
        for target in imports(path):
            theirs = layer_of(target)
            if theirs != mine and (mine, theirs) not in ALLOWED \
                    and LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{module} imports {target}")
    return wrong


class LayerTests(SynchronousTestCase):
    def test_every_module_sits_in_a_known_layer(self):
        folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
        self.assertEqual(folders, set(LAYERS) - {""})

    def test_no_module_imports_a_layer_above_its_own(self):
        self.assertEqual(wrong_imports(PACKAGE), [])

    def test_the_check_sees_a_wrong_import(self):
        """The check itself can fail: a wire module that imports the server."""
        root = tempfile.TemporaryDirectory()
        self.addCleanup(root.cleanup)
        package = Path(root.name) / "bpctunnel"
        (package / "wire").mkdir(parents=True)
        (package / "wire" / "mux.py").write_text(
            "from bpctunnel.server.protocol import TunnelServerFactory\n"
            "from bpctunnel import errors\n")
        self.assertEqual(wrong_imports(package),
                         ["bpctunnel.wire.mux imports bpctunnel.server.protocol"])
