"""
Exceptions raised by bpctunnel.

Every error a person may see derives from L{BpcTunnelError}; its message says
what went wrong, the offending value, and how to fix it.
"""

from bpctunnel.refusals import Refusal


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

    C{refusal} is the L{Refusal} member of a subclass: its words start the
    message (as C{reason}), its status is the one the server answers with (as
    C{http_status}); C{host} and C{detail} are kept.
    """

    refusal: Refusal | None = None
    reason = "refused"
    http_status = 403

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.refusal is not None:
            cls.reason = cls.refusal.words
            cls.http_status = cls.refusal.http_status

    def __init__(self, host, detail):
        super().__init__(self.refusal.text(host, detail) if self.refusal is not None
                         else f"{self.reason} for {host}: {detail}")
        self.host = host
        self.detail = detail


class UnknownHost(Refused):
    """The certificate names no valid host listed in BackupPC's hosts file."""

    refusal = Refusal.UNKNOWN_HOST


class FingerprintMismatch(Refused):
    """The certificate is not the one the host's config names in TunnelCert."""

    refusal = Refusal.FINGERPRINT_MISMATCH


class HostConfigInvalid(Refused):
    """The host's BackupPC config cannot be read or lacks a valid setting."""

    refusal = Refusal.HOST_CONFIG_ERROR


class BadCertificate(Refused):
    """The client's certificate cannot name a host (no common name, say)."""

    refusal = Refusal.BAD_CERTIFICATE


class PortShared(Refused):
    """Another host in BackupPC's config has the same RsyncdClientPort."""

    refusal = Refusal.PORT_SHARED


class AlreadyConnected(Refused):
    """The host already has a tunnel open."""

    refusal = Refusal.ALREADY_CONNECTED


class TooManyWatchers(Refused):
    """The host's tunnel has as many backup-now connections following it as it may."""

    refusal = Refusal.TOO_MANY_WATCHERS


class PortUnavailable(Refused):
    """The host's tunnel port cannot be listened on."""

    refusal = Refusal.PORT_UNAVAILABLE


class EditRefused(ConfigError):
    """
    A BackupPC file cannot be edited safely by a program; the message names the
    file, the lines and what to change by hand.
    """
