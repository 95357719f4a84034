"""Settings: one table of every key with its type, default and meaning.

The same table validates ``/etc/sipd/sipd.conf`` (TOML), fills the command
line's defaults, prints ``--check-config``, writes the sample file
(``--print-sample-config``), says which keys SIGHUP applies (``live``) and
documents the keys in ``sipd(8)``, so a key cannot exist in one place and
not the others.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sipd import __version__
from sipd.auth.challenges import DEFAULT_SHA256_USER_AGENTS
from sipd.proxy.calltrack import DEFAULT_ACC_LIMIT
from sipd.sip.errors import ParseError
from sipd.sip.uri import SipURI, parse_uri
from srfs import sipdconf
from srfs.sipdconf import ConfigError as ConfigError

DEFAULT_CONFIG_PATH = sipdconf.DEFAULT_PATH


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One socket to open: ``udp``, ``tcp``, ``tls``, ``ws`` or ``wss`` on ``host:port``."""

    transport: str
    host: str
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


#: Listen prefixes and the transports each opens; no prefix means UDP and TCP.
LISTEN_PREFIXES: dict[str, tuple[str, ...]] = {
    "udp": ("udp",), "tcp": ("tcp",), "tls": ("tls",), "ws": ("ws",), "wss": ("wss",),
}
#: Transports that need tls_certificate and tls_private_key.
SECURE_TRANSPORTS = ("tls", "wss")
#: The port a ``tls:`` listen without one gets (RFC 3261 §19.1.2).
TLS_PORT = 5061


def _split_address(spec: str, text: str, what: str, *,
                   brackets: bool = False) -> tuple[str, int]:
    """The IP address and port of ``HOST:PORT`` or ``[IPv6]:PORT``, checked.

    ``text`` is what the user wrote and ``what`` names it in the error.
    ``brackets``: an IPv6 address must be in brackets.
    """
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or spec[end + 1 : end + 2] != ":":
            raise ConfigError(f"bad {what} {text!r}: expected [IPv6]:PORT")
        host, port_text = spec[1:end], spec[end + 2 :]
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep:
            raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad {what} {text!r}: bad port {port_text!r}")
    if ip.version == 4 and ":" in host:
        raise ConfigError(f"bad {what} {text!r}")
    if brackets and ip.version == 6 and not spec.startswith("["):
        raise ConfigError(f"bad {what} {text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    return str(ip), int(port_text)


def parse_listen(text: str) -> list[ListenAddress]:
    """``[udp:|tcp:|tls:|ws:|wss:]HOST:PORT``; without a prefix both UDP and TCP.

    IPv6 hosts are written in brackets: ``[::1]:5060``. ``tls:HOST`` without
    a port listens on 5061.
    """
    spec = text.strip()
    transports: tuple[str, ...] = ("udp", "tcp")
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in LISTEN_PREFIXES:
        transports = LISTEN_PREFIXES[head.lower()]
        spec = rest
    if transports == ("tls",) and (spec.endswith("]") or ("[" not in spec and ":" not in spec)):
        spec = f"{spec}:{TLS_PORT}"
    host, port = _split_address(spec, text, "listen address")
    return [ListenAddress(t, host, port) for t in transports]


@dataclass(frozen=True, slots=True)
class HostPort:
    """A TCP address to listen on for something other than SIP: the metrics endpoint."""

    host: str
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_listen(text: str) -> HostPort | None:
    """``HOST:PORT`` or ``[IPv6]:PORT``; the empty string is None (no endpoint)."""
    spec = text.strip()
    if not spec:
        return None
    return HostPort(*_split_address(spec, text, "metrics_listen address", brackets=True))


def _positive_int(name: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        return value

    return check


def _non_negative_number(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{name} must be a number >= 0, not {value!r}")
        return float(value)

    return check


def _positive_number(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or value == math.inf:
            raise ConfigError(f"{name} must be a number > 0, not {value!r}")
        return float(value)

    return check


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return value

    return check


def _string(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        return sipdconf.check_string(name, value)

    return check


def _dial_digits(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.isascii() or not (
                value == "" or (value.isdigit() and len(value) <= 8)):
            raise ConfigError(f"{name} must be a string of up to 8 digits, not {value!r}")
        return value

    return check


def _choice(name: str, *choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return check


def _string_list(name: str) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name} must be a list of strings, not {value!r}")
        return tuple(value)

    return check


def _outbound_proxy(value: Any) -> str:
    """A sip: URI with a numeric address or a name, or empty (calls out refused)."""
    if value == "":
        return ""
    text = _string("outbound_proxy")(value)
    try:
        uri = parse_uri(text)
    except ParseError as exc:
        raise ConfigError(f"outbound_proxy {text!r} is not a SIP URI: {exc.reason}") from None
    if not isinstance(uri, SipURI) or uri.secure:
        raise ConfigError(f"outbound_proxy must be a sip: URI, not {text!r}")
    if (uri.transport or "udp") not in ("udp", "tcp"):
        raise ConfigError(f"outbound_proxy: transport {uri.transport!r} is not supported (udp, tcp)")
    return text


def rtpengine_address(text: str) -> tuple[str, int]:
    """``udp:HOST:PORT`` of rtpengine's ng socket (IPv6 in brackets) as (host, port)."""
    spec = text.strip()
    transport, sep, rest = spec.partition(":")
    if sep and transport.lower() in ("tcp", "tls", "ws", "wss"):
        raise ConfigError(f"rtpengine {text!r}: only udp: is supported (rtpengine's --listen-ng)")
    if sep and transport.lower() == "udp":
        spec = rest
    try:
        found = parse_listen("udp:" + spec)[0]
    except ConfigError:
        raise ConfigError(f"rtpengine must be udp:ADDRESS:PORT (IPv6 as [ADDRESS]), "
                          f"not {text!r}") from None
    if found.host in ("0.0.0.0", "::"):
        raise ConfigError(f"rtpengine {text!r}: give the address rtpengine listens on")
    return found.host, found.port


def _rtpengine(value: Any) -> str:
    """rtpengine's ng address, normalised to ``udp:HOST:PORT``, or empty (no relay)."""
    if value == "":
        return ""
    text = _string("rtpengine")(value)
    return str(ListenAddress("udp", *rtpengine_address(text)))


def _algorithms(value: Any) -> tuple[str, ...]:
    names = _string_list("auth_algorithms")(value)
    out = []
    for name in names:
        canonical = {"md5": "MD5", "sha-256": "SHA-256"}.get(name.lower())
        if canonical is None:
            raise ConfigError(f"auth_algorithms: {name!r} is not MD5 or SHA-256")
        if canonical in out:
            raise ConfigError(f"auth_algorithms: {canonical} given twice")
        out.append(canonical)
    if not out:
        raise ConfigError("auth_algorithms must name at least one algorithm")
    return tuple(out)


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in _string_list("trusted_networks")(value):
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ConfigError(f"trusted_networks: {item!r}: {exc}") from None
        if net.prefixlen == 0:
            raise ConfigError(f"trusted_networks: {item!r} would trust every address")
        out.append(net)
    return tuple(out)


def _path_or_empty(name: str) -> Callable[[Any], str]:
    """A file path, or "" for none (the key's default meaning)."""
    def check(value: Any) -> str:
        if value == "":
            return ""
        path = _string(name)(value)
        if not path.startswith("/"):
            raise ConfigError(f"{name} must be an absolute path, not {value!r}")
        return path

    return check


def _origins(value: Any) -> tuple[str, ...]:
    """WebSocket origins as browsers send them: scheme://host[:port], no path."""
    out = []
    for item in _string_list("ws_allowed_origins")(value):
        origin = item.strip().rstrip("/").lower()
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ConfigError(f"ws_allowed_origins: {item!r} is not an origin "
                              "such as https://phone.example.org")
        out.append(origin)
    return tuple(out)


def _listen(value: Any) -> tuple[ListenAddress, ...]:
    out: list[ListenAddress] = []
    for item in _string_list("listen")(value):
        out.extend(parse_listen(item))
    return tuple(out)


def _metrics_listen(value: Any) -> HostPort | None:
    if not isinstance(value, str):
        raise ConfigError(f"metrics_listen must be a string, HOST:PORT or [IPv6]:PORT, "
                          f"not {value!r}")
    return parse_metrics_listen(value)


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return value.lower()


#: ``trace`` is ``debug`` with the libraries' own debug messages (trio, pyfuse3).
LOG_LEVELS = ("trace", "debug", "info", "warning", "error")


def _toml(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(str(v)) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: its name in the file, how to check it, and what it means.

    ``live``: SIGHUP puts a new value in force in the running daemon;
    otherwise it takes a restart (sipd logs which keys wait for one).
    ``sample``: how the sample file writes the default, when the value's own
    TOML is not how one would write it, or an example for a key whose
    default has no literal (the realm: the host's name).
    """

    name: str
    check: Callable[[Any], Any]
    doc: str
    live: bool = False
    sample: str | None = None


DEFAULT_LISTEN = ("0.0.0.0:5060", "[::]:5060")


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Built-in defaults, then the file, then options."""

    listen: tuple[ListenAddress, ...] = field(
        default_factory=lambda: _listen(list(DEFAULT_LISTEN))
    )
    listen_is_default: bool = True
    metrics_listen: HostPort | None = None
    mount: str = "/run/sr"
    mount_enabled: bool = True
    realm: str = ""
    domains: tuple[str, ...] = ()
    group: str = sipdconf.DEFAULT_GROUP
    pam_service: str = "sipd"
    pam: bool = True
    locked_suspends: bool = True
    account_cache_ttl: float = 600.0
    member_refresh_interval: float = 20.0
    member_full_interval: float = 300.0
    retry_after: int = 30
    auth_algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    sha256_user_agents: tuple[str, ...] = DEFAULT_SHA256_USER_AGENTS
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    log_level: str = "info"
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10
    overflow: str = "replace-oldest"
    sync: str = "write-through"
    flush_interval: float = 5.0
    wtmp: bool = True
    acc: bool = True
    acc_limit: int = DEFAULT_ACC_LIMIT
    outbound_proxy: str = ""
    aliases: str = "/etc/sipd/aliases"
    trunks: str = "/etc/sipd/trunks"
    from_policy: str = "reject"
    rtpengine: str = ""
    media_relay: str = "nat"
    country_code: str = ""
    national_prefix: str = ""
    international_prefix: str = ""
    max_message_size: int = 65535
    tcp_max_connections: int = 1024
    tcp_max_connections_per_source: int = 128
    tcp_idle_timeout: float = 300.0
    tcp_unregistered_idle_timeout: float = 30.0
    tcp_message_timeout: float = 32.0
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""
    tls_verify_client: str = "no"
    ws_allowed_origins: tuple[str, ...] = ()
    keepalive_interval: float = 30.0
    keepalive_drop_after: float = 0.0
    config_path: str = DEFAULT_CONFIG_PATH
    #: Whether the file must exist (named with -c), and the checked values of
    #: the command line's options: what SIGHUP reads and applies again.
    config_required: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def effective_realm(self) -> str:
        """The realm in use; without one configured this asks DNS (see :meth:`resolved`)."""
        return sipdconf.effective_realm(self.realm)

    def resolved(self) -> Settings:
        """These settings with the realm filled in, so nothing asks DNS for it again."""
        return self if self.realm else replace(self, realm=sipdconf.host_realm())


#: The keys a config file may set, in the order ``--check-config`` prints them.
KEYS: tuple[Key, ...] = (
    Key("listen", _listen, "addresses to listen on: [udp:|tcp:|tls:|ws:|wss:]HOST:PORT, IPv6 "
        "as [ADDR]:PORT; without a prefix both UDP and TCP, tls: without a port 5061 "
        "(default 0.0.0.0:5060 and [::]:5060; when set, even to these, a host without IPv6 "
        "fails to start)",
        sample=_toml(DEFAULT_LISTEN)),
    Key("metrics_listen", _metrics_listen,
        "where Prometheus scrapes /metrics over HTTP: HOST:PORT, IPv6 as [ADDR]:PORT "
        "(default empty: no HTTP endpoint); there is no authentication, so name a loopback "
        "or management address"),
    Key("mount", _string("mount"), "where the state filesystem is mounted (default /run/sr)"),
    Key("mount_enabled", _bool("mount_enabled"), "mount the state filesystem (default true)"),
    Key("realm", sipdconf.realm_setting,
        "digest realm and primary local domain (default: the host's FQDN)",
        sample='"sip.example.org"'),
    Key("domains", _string_list("domains"), "further domains or addresses treated as local"),
    Key("group", _string("group"), "UNIX group whose members may use SIP (default sip)"),
    Key("pam_service", _string("pam_service"), "PAM service for the account check (default sipd)"),
    Key("pam", _bool("pam"), "run the PAM account check (default true)"),
    Key("locked_suspends", _bool("locked_suspends"),
        "a locked UNIX password (shadow entry starting with !, passwd -S shows L) suspends "
        "SIP: registrations, calls and the user's trusted trunks (default true)", live=True),
    Key("account_cache_ttl", _non_negative_number("account_cache_ttl"),
        "seconds an account's state (SIP group, locked or expired, PAM) is reused; a change "
        "of /etc/passwd, /etc/group, /etc/shadow or the PAM service file counts within a "
        "second, SIGHUP at once, leaving the group within member_refresh_interval (600)",
        live=True),
    Key("member_refresh_interval", _positive_number("member_refresh_interval"),
        "seconds between re-reads of the SIP group entry (one group look-up each): the "
        "longest a new or removed supplementary member takes to count; also how often a "
        "failing user database is probed (20)", live=True),
    Key("member_full_interval", _positive_number("member_full_interval"),
        "seconds between full passes over the SIP group (every account enumerated: members "
        "by primary group, and the listed members' entries) (300)", live=True),
    Key("retry_after", _positive_int("retry_after"),
        "Retry-After, seconds, of the 503 a request gets while the user database fails (30)",
        live=True),
    Key("auth_algorithms", _algorithms,
        "digest algorithms accepted (default MD5, SHA-256); a challenge offers one of them, "
        "the one the phone used last, or SHA-256 and MD5 to phones of sha256_user_agents, "
        "else MD5", live=True),
    Key("sha256_user_agents", _string_list("sha256_user_agents"),
        "User-Agent substrings of phones offered SHA-256 first (default: "
        + ", ".join(DEFAULT_SHA256_USER_AGENTS) + ")", live=True),
    Key("trusted_networks", _networks,
        "addresses never throttled for failed authentications, as networks "
        "(default none; trusted trunks never are)", live=True),
    Key("log_level", _log_level, "trace, debug, info, warning or error (default info)", live=True),
    Key("min_expires", _positive_int("min_expires"), "shortest registration accepted, seconds (60)",
        live=True),
    Key("max_expires", _positive_int("max_expires"), "longest registration granted, seconds (3600)",
        live=True),
    Key("default_expires", _positive_int("default_expires"),
        "registration time when the phone asks none, seconds (3600)", live=True),
    Key("max_contacts", _positive_int("max_contacts"), "bindings per address of record (10)",
        live=True),
    Key("overflow", _choice("overflow", "replace-oldest", "reject"),
        "a REGISTER beyond max_contacts: replace-oldest or reject", live=True),
    Key("sync", _choice("sync", "write-through", "write-back"),
        "write-through: registrations on disk before the 200 OK; write-back: every flush_interval"),
    Key("flush_interval", _non_negative_number("flush_interval"), "write-back period, seconds (5)",
        live=True),
    Key("wtmp", _bool("wtmp"), "record registrations in utmp/wtmp (default true)"),
    Key("acc", _bool("acc"), "write call records to ~/.sr/acc (default true)", live=True),
    Key("acc_limit", _positive_int("acc_limit"),
        f"call records a minute per user; beyond them new calls go unrecorded ({DEFAULT_ACC_LIMIT})",
        live=True),
    Key("outbound_proxy", _outbound_proxy,
        "sip: URI where local users' calls to other domains go (default empty: refused, 403)"),
    Key("aliases", _string("aliases"), "the alias map (default /etc/sipd/aliases)"),
    Key("trunks", _string("trunks"), "trusted trunks by source address (default /etc/sipd/trunks)"),
    Key("from_policy", _choice("from_policy", "reject", "rewrite"),
        "a call whose From user the caller does not own: reject (403) or rewrite it", live=True),
    Key("rtpengine", _rtpengine,
        "rtpengine's ng control socket, udp:ADDRESS:PORT, IPv6 as udp:[ADDRESS]:PORT "
        "(default empty: no media relay)", sample='""'),
    Key("media_relay", _choice("media_relay", "always", "nat", "never"),
        "which calls with an SDP offer go through rtpengine: always, nat (only when the "
        "caller or the callee is behind a NAT) or never (default nat)", live=True),
    Key("country_code", _dial_digits("country_code"),
        "the country calling code of this server's numbers, digits without + (\"49\"); with "
        "national_prefix, national numbers match their E.164 form (default empty: numbers "
        "only lose their visual separators)", live=True),
    Key("national_prefix", _dial_digits("national_prefix"),
        "the prefix of national numbers (\"0\"); used with country_code (default empty)",
        live=True),
    Key("international_prefix", _dial_digits("international_prefix"),
        "the prefix of international numbers (\"00\"), read as + (default empty: only + "
        "marks them)", live=True),
    Key("max_message_size", _positive_int("max_message_size"),
        "largest SIP message accepted, bytes (65535)"),
    Key("tcp_max_connections", _positive_int("tcp_max_connections"),
        "TCP connections open at once, at most the open-file limit less a reserve; "
        "more are refused (1024)", live=True),
    Key("tcp_max_connections_per_source", _positive_int("tcp_max_connections_per_source"),
        "TCP connections open at once from one IPv4 address or IPv6 /64; more are refused "
        "(128: an office of 50 phones behind one NAT, two connections each, with room to spare)",
        live=True),
    Key("tcp_idle_timeout", _non_negative_number("tcp_idle_timeout"),
        "close a TCP connection silent this long, seconds (300)", live=True),
    Key("tcp_unregistered_idle_timeout", _non_negative_number("tcp_unregistered_idle_timeout"),
        "close an accepted TCP connection that carries no registration when no SIP message "
        "came over it for this long; keep-alives do not count; 0 turns this off, seconds (30)",
        live=True),
    Key("tcp_message_timeout", _non_negative_number("tcp_message_timeout"),
        "close a TCP connection that leaves a message unfinished this long after its first "
        "byte, seconds (32); also how long a TLS handshake or WebSocket upgrade may take",
        live=True),
    Key("tls_certificate", _path_or_empty("tls_certificate"),
        "PEM file of the server certificate (and its chain) for tls: and wss: listeners; "
        "read again on SIGHUP (default none)", live=True),
    Key("tls_private_key", _path_or_empty("tls_private_key"),
        "PEM file of the private key of tls_certificate, readable by root; read again on "
        "SIGHUP (default none)", live=True),
    Key("tls_ca_certificates", _path_or_empty("tls_ca_certificates"),
        "PEM file of the CA certificates that verify TLS peers: servers sipd connects to "
        "and, with tls_verify_client, phones (default: the system's)", live=True),
    Key("tls_verify_client", _choice("tls_verify_client", "no", "optional", "required"),
        "client certificates over tls: and wss: listeners: no (not asked), optional "
        "(checked when sent) or required", live=True),
    Key("ws_allowed_origins", _origins,
        "Origins (https://host[:port]) whose web pages may open a ws: or wss: connection; "
        "others get HTTP 403 (default empty: any)", live=True),
    Key("keepalive_interval", _non_negative_number("keepalive_interval"),
        "send an OPTIONS to each contact registered from behind a NAT this often, which keeps "
        "the NAT's mapping open and shows whether the phone answers; 0 turns probing off, "
        "seconds (30: NATs commonly forget a silent UDP mapping after 30 to 60 s)", live=True),
    Key("keepalive_drop_after", _non_negative_number("keepalive_drop_after"),
        "remove a probed contact that has not answered for this long, as if it expired; "
        "0 keeps it until it expires (calls skip it meanwhile), seconds (0)", live=True),
)
_KEYS = {k.name: k for k in KEYS}


def load_file(path: str, *, required: bool) -> dict[str, Any]:
    """Read and check a TOML config file; a missing optional file gives {}."""
    return check_values(sipdconf.read_file(path, required=required), source=path)


def check_values(raw: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = _KEYS.get(name)
        if key is None:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        try:
            out[name] = key.check(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return out


def build(file_values: dict[str, Any], overrides: dict[str, Any], config_path: str,
          *, config_required: bool = False) -> Settings:
    """Defaults, then the file, then command-line options; then cross-checks."""
    values = dict(file_values)
    values.update(overrides)
    settings = Settings(config_path=config_path, config_required=config_required,
                        options=tuple(overrides.items()))
    changes = dict(values)
    if "listen" in values:
        changes["listen_is_default"] = False
    settings = replace(settings, **changes)
    if settings.min_expires > settings.max_expires:
        raise ConfigError(
            f"min_expires ({settings.min_expires}) is larger than max_expires ({settings.max_expires})"
        )
    if not settings.min_expires <= settings.default_expires <= settings.max_expires:
        raise ConfigError("default_expires must lie between min_expires and max_expires")
    if settings.max_message_size < 1024:
        raise ConfigError("max_message_size must be at least 1024 bytes")
    if not settings.listen:
        raise ConfigError("nothing to listen on")
    seen: set[ListenAddress] = set()
    for addr in settings.listen:
        if addr in seen:
            raise ConfigError(f"listen address {addr} given twice")
        seen.add(addr)
    secure = [a for a in settings.listen if a.transport in SECURE_TRANSPORTS]
    if secure and not (settings.tls_certificate and settings.tls_private_key):
        raise ConfigError(f"listen {secure[0]} needs tls_certificate and tls_private_key")
    metrics = settings.metrics_listen
    if metrics is not None:
        for addr in settings.listen:
            if addr.transport != "udp" and _overlap(metrics, HostPort(addr.host, addr.port)):
                raise ConfigError(f"metrics_listen {metrics} is taken by the SIP listen "
                                  f"address {addr}")
    return settings


def _overlap(a: HostPort, b: HostPort) -> bool:
    """Whether two TCP listeners would want the same port on an address (IPv6 sockets
    are IPv6-only)."""
    return (a.port == b.port and a.family == b.family
            and (a.host == b.host or a.wildcard or b.wildcard))


def describe(settings: Settings) -> list[str]:
    """``key = value`` lines of the effective settings, in TOML syntax."""
    lines = []
    for f in fields(Settings):
        if f.name in ("listen_is_default", "config_path", "config_required", "options"):
            continue
        value = getattr(settings, f.name)
        if f.name == "realm":
            value = settings.effective_realm()
        lines.append(f"{f.name} = {_toml(value)}")
    return lines


def reread(current: Settings) -> Settings:
    """What SIGHUP reads: the same file again, under the same command-line options.

    Raises :class:`ConfigError` like a start would; the caller keeps
    ``current`` then.
    """
    file_values = load_file(current.config_path, required=current.config_required)
    return build(file_values, dict(current.options), current.config_path,
                 config_required=current.config_required)


def changed(old: Settings, new: Settings) -> list[str]:
    """The keys whose values differ, in table order."""
    return [k.name for k in KEYS if getattr(old, k.name) != getattr(new, k.name)]


def sample_config() -> str:
    """The sample ``sipd.conf``: every key, commented out, at its default, with its meaning."""
    defaults = Settings()
    out = [
        "# sipd.conf: the settings of sipd(8), in TOML.",
        f"# Written by sipd {__version__} --print-sample-config.",
        "#",
        "# Every key is here, commented out, at its built-in default. To set one,",
        "# remove the \"#\" and change the value; options on the command line win",
        "# over this file. Keys marked \"reload\" take effect on SIGHUP",
        "# (systemctl reload sipd); the others at the next start. Test a change",
        "# with \"sipd --check-config\" before reloading or restarting.",
        "#",
        "# Keep the file readable by every user: sippasswd(1) reads the realm",
        "# and the group from it.",
    ]
    for key in KEYS:
        when = "reload" if key.live else "restart"
        value = key.sample if key.sample is not None else _toml(getattr(defaults, key.name))
        out.append("")
        out.extend(textwrap.wrap(f"{key.doc} [{when}]", width=76, initial_indent="# ",
                                 subsequent_indent="# ", break_on_hyphens=False))
        out.append(f"#{key.name} = {value}")
    return "\n".join(out) + "\n"
