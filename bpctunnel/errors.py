"""
Exceptions raised by bpctunnel.

Every error a person may see derives from L{BpcTunnelError}; its message says
what went wrong, the offending value, and how to fix it.
"""


class BpcTunnelError(Exception):
    """Base class of every bpctunnel error."""


class ConfigError(BpcTunnelError):
    """A configuration file or option is missing, unreadable or malformed."""


class CertificateError(BpcTunnelError):
    """A certificate or key is missing, unreadable, or does not fit."""


class ProtocolError(BpcTunnelError):
    """The peer sent something the tunnel protocol does not allow."""


class BadFrame(ProtocolError):
    """A tunnel message could not be decoded."""


class Refused(BpcTunnelError):
    """
    A client is refused a tunnel; C{str(self)} is shown to the client and logged.

    C{reason} is a short fixed phrase that starts the message, C{http_status}
    the status the server answers with; C{host} and C{detail} are kept.
    """

    reason = "refused"
    http_status = 403

    def __init__(self, host, detail):
        super().__init__(f"{self.reason} for {host}: {detail}")
        self.host = host
        self.detail = detail


class UnknownHost(Refused):
    """The certificate names no valid host listed in BackupPC's hosts file."""

    reason = "unknown host"
    http_status = 403


class FingerprintMismatch(Refused):
    """The certificate is not the one the host's config names in TunnelCert."""

    reason = "fingerprint mismatch"
    http_status = 403


class HostConfigInvalid(Refused):
    """The host's BackupPC config cannot be read or lacks a valid setting."""

    reason = "host config error"
    http_status = 403


class AlreadyConnected(Refused):
    """The host already has a tunnel open."""

    reason = "already connected"
    http_status = 409


class PortUnavailable(Refused):
    """The host's tunnel port cannot be listened on."""

    reason = "port unavailable"
    http_status = 503


class EditRefused(ConfigError):
    """
    A BackupPC file cannot be edited safely by a program; the message names the
    file, the lines and what to change by hand.
    """
