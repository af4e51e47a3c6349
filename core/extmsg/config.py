"""Configuration: a TOML file plus the environment, validated with msgspec.

Every problem is reported as one ``key: reason`` line (``channels[1].settings.auth_token:
required``), all of them at once, so a user fixes a file in one pass. Any string may reference
the environment as ``${NAME}`` or ``${NAME:-default}``; secrets belong there.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .errors import ConfigError
from .fetch import IPNetwork, parse_networks
from .logsafe import MIN_SECRET_LENGTH, register_secrets
from .models import Channel, MessengerType, Recipient, Secret, is_secret

__all__ = [
    "AdminConfig",
    "ChannelConfig",
    "Config",
    "EngineConfig",
    "ServerConfig",
    "StoreConfig",
    "UnbluConfig",
    "load_config",
    "parse_config",
    "placeholder_warnings",
    "register_config_secrets",
    "secret_values",
]

S = TypeVar("S", bound=msgspec.Struct)

ChannelName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


SERVER_HOST = "127.0.0.1"
SERVER_PORT = 8080
ADMIN_LISTEN = "127.0.0.1:8081"


class ServerConfig(_Section, frozen=True):
    host: str = SERVER_HOST
    port: Port = SERVER_PORT
    #: How providers and Unblu reach this server (behind a proxy: the proxy's URL).
    public_url: str | None = None
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 4 * 1024 * 1024
    shutdown_timeout: Positive = 20.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` (one line per record for people) or ``json`` (one JSON object per line, with
    #: the request id, channel, job, message and conversation ids as fields).
    log_format: Literal["text", "json"] = "text"
    #: Whether log lines may quote what contacts and agents write (masked, cut); off, only
    #: its length is logged. For debugging a test system, never for customers' data.
    log_message_text: bool = False
    #: Networks files named by providers may be fetched from although they are not public
    #: (e.g. ``["10.20.0.0/16"]``); see :mod:`extmsg.fetch`. The sandbox allows loopback.
    fetch_allowed_networks: list[str] = msgspec.field(default_factory=list)
    #: Peers (IP addresses or CIDR networks) whose ``X-Forwarded-Proto``/``X-Forwarded-Host``
    #: are believed when ``public_url`` is not set; empty trusts none. ``"*"`` trusts every
    #: peer: only for a port that nothing but the proxy can reach.
    trusted_proxies: tuple[str, ...] = ()
    #: Server processes sharing the port and the store (``extmsg serve --workers``); unset:
    #: one per core with PostgreSQL, one with SQLite (see :meth:`Config.worker_count`).
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    #: The event loop: ``auto`` (uvloop when it is installed, else asyncio's own), ``uvloop``
    #: (an error without it) or ``asyncio``.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    def __post_init__(self) -> None:
        try:
            parse_networks(tuple(self.fetch_allowed_networks))
        except ValueError as exc:
            raise ValueError(f"fetch_allowed_networks: {exc}") from None
        try:
            parse_networks(tuple(p for p in self.trusted_proxies if p != "*"))
        except ValueError as exc:
            raise ValueError(f'trusted_proxies: {exc}, nor "*"') from None

    def trusts_proxy(self, peer: str | None) -> bool:
        """Whether the direct peer ``peer`` (an IP address) may set ``X-Forwarded-*``."""
        return _peer_trusted(self.trusted_proxies, peer)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"


@functools.lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(tuple(e for e in entries if e != "*"))


def _peer_trusted(entries: tuple[str, ...], peer: str | None) -> bool:
    if not entries or not peer:
        return False
    if "*" in entries:
        return True
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in _networks(entries))


#: Shortest ``[admin] token`` accepted: a bearer token is guessed online, so make it long.
MIN_ADMIN_TOKEN_LENGTH = 16


class AdminConfig(_Section, frozen=True):
    """The admin listener: ``/metrics``, ``/-/plugins``, the detailed ``/readyz``. It is kept
    off the public port, which the providers and Unblu call from the internet."""

    #: ``host:port`` (``[::1]:8081`` for IPv6); port 0 takes a free port (logged at start).
    listen: str = ADMIN_LISTEN
    #: When set, every admin request needs ``Authorization: Bearer <token>``.
    token: Secret = ""
    #: Serve a listener on an address other than loopback without a token: only where the
    #: network alone keeps everyone but the scraper away from the port.
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        host = self.address[0]  # raises for a malformed address
        if self.token and len(self.token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"token: at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "(e.g. from: openssl rand -hex 32)"
            )
        if not self.token and not self.allow_unauthenticated and not is_loopback(host):
            raise ValueError(
                f"token: required when listen ({self.listen}) is not a loopback address "
                '(e.g. token = "${EXTMSG_ADMIN_TOKEN}"), or set allow_unauthenticated = true '
                "if only the network guards the port"
            )

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as (host, port)."""
        return parse_listen(self.listen)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address[0])


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-address]:port`` as (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen: {value!r}: write an IPv6 address in brackets, e.g. [::1]:8081")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen: {value!r} is not host:port, e.g. 127.0.0.1:8081")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


class StoreConfig(_Section, frozen=True):
    #: ``sqlite`` (embedded, one instance) or ``postgres`` (several instances).
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: The SQLite file (``sqlite``).
    path: str = "extmsg.sqlite3"
    #: The PostgreSQL connection URI (``postgres``), e.g. ``postgresql://user:pw@host/db``.
    dsn: Secret | None = None
    #: Days after which the texts and files in finished (done or dead) jobs' payloads are
    #: removed; the jobs stay with their ids, states and counts. 0 keeps them.
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    #: SQLite's ``synchronous``: ``normal`` keeps every commit across a crash of the process,
    #: ``full`` across a power loss or a crash of the OS too, at a cost in throughput
    #: (``sqlite`` only: PostgreSQL's own ``synchronous_commit`` and ``fsync`` decide there).
    synchronous: Literal["normal", "full"] = "normal"


class UnbluConfig(_Section, frozen=True):
    #: The web API prefix without the version, e.g. ``https://unblu.example.com/app/rest``.
    base_url: str | None = None
    api_version: Literal["v3", "v4"] = "v4"
    username: str = ""
    password: Secret = ""
    timeout: Positive = 10.0
    #: Create or update each channel in Unblu at start.
    provision: bool = True
    outbound_timeout_millis: Annotated[int, msgspec.Meta(ge=1000)] = 10000


class EngineConfig(_Section, frozen=True):
    #: Jobs running at once (each mostly waits on a remote API), at most one per lane.
    workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 10
    backoff_initial: Positive = 1.0
    backoff_max: Positive = 300.0
    lease_seconds: Positive = 60.0
    group_commit_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    #: Finished jobs are kept this long for ``extmsg outbox``, then deleted. Dead letters stay.
    keep_done_hours: Annotated[float, msgspec.Meta(ge=0)] = 24.0


class ChannelConfig(_Section, frozen=True):
    name: ChannelName
    messenger: str
    #: Unblu signs its calls to this channel with it (``webhookSecret``).
    webhook_secret: Secret
    engagement_type: str = "CHAT_REQUEST"
    recipient: Recipient | None = None
    sender_prefix: str = "{sender}: "
    sender_fallback: str = "Agent"
    topic: str | None = None
    #: Refuse provider and Unblu calls with a bad signature. Off only for local development.
    verify_signatures: bool = True
    #: Sent to the contact when Unblu ends the conversation; unset: nothing is sent.
    ended_text: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    #: A message that is one of these words opts its contact out (no more sends to them);
    #: unset: the messenger's default (Twilio: STOP, STOPALL, UNSUBSCRIBE, …); [] turns it off.
    opt_out_keywords: list[str] | None = None
    #: A message that is one of these words opts the contact back in; unset: the messenger's.
    opt_in_keywords: list[str] | None = None
    #: Sent back to confirm an opt-out / opt-in; unset: the messenger's default, "": none.
    opt_out_reply: str | None = None
    opt_in_reply: str | None = None
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class Config(_Section, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    unblu: UnbluConfig = msgspec.field(default_factory=UnbluConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    channels: list[ChannelConfig] = msgspec.field(default_factory=list)
    #: Where the file was read from; relative store paths resolve against its folder.
    source: str | None = None
    #: Settings Structs per channel name, validated against the owning plugin's schema.
    channel_settings: dict[str, Any] = msgspec.field(default_factory=dict)

    def runtime_channels(self) -> list[Channel]:
        return [
            Channel(
                name=ch.name,
                messenger=ch.messenger,
                settings=self.channel_settings.get(ch.name),
                public_url=self.server.base_url,
                webhook_secret=ch.webhook_secret,
                engagement_type=ch.engagement_type,
                recipient=ch.recipient,
                sender_prefix=ch.sender_prefix,
                sender_fallback=ch.sender_fallback,
                topic=ch.topic,
                verify_signatures=ch.verify_signatures,
                fetch_allowed_networks=tuple(self.server.fetch_allowed_networks),
                ended_text=ch.ended_text,
                opt_out_keywords=(
                    None if ch.opt_out_keywords is None else tuple(ch.opt_out_keywords)
                ),
                opt_in_keywords=None if ch.opt_in_keywords is None else tuple(ch.opt_in_keywords),
                opt_out_reply=ch.opt_out_reply,
                opt_in_reply=ch.opt_in_reply,
            )
            for ch in self.channels
        ]

    def worker_count(self) -> int:
        """Server processes: ``[server] workers``, else one per core with PostgreSQL (instances
        share its work already) and one with SQLite (its commits take turns on one file lock;
        a second writer process measured slower than one, see docs/deploy.md)."""
        if self.server.workers is not None:
            return self.server.workers
        if self.store.backend == "postgres":
            return max(
                1,
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1,
            )
        return 1

    def store_path(self) -> Path:
        path = Path(self.store.path)
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        return path


# --- loading ----------------------------------------------------------------------------------
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(
    path: str | os.PathLike[str],
    messengers: Mapping[str, MessengerType],
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate a config file.

    :raises ConfigError: with every problem found, each naming its key.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (create one with 'extmsg init')"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, messengers, env=env, source=str(path))


def parse_config(
    raw: dict[str, Any],
    messengers: Mapping[str, MessengerType],
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Config:
    """Validate an already parsed TOML document (see :func:`load_config`)."""
    problems: list[str] = []
    data = _expand_env(raw, os.environ if env is None else env, "", problems)
    unset = {_key_of(p) for p in problems}
    unset_lines = len(problems)
    assert isinstance(data, dict)
    data.pop("source", None)
    data.pop("channel_settings", None)
    _check_struct(data, Config, "", problems)
    store = data.get("store")
    if isinstance(store, dict) and store.get("backend") == "postgres" and not store.get("dsn"):
        problems.append('store.dsn: required when store.backend is "postgres"')
    if (
        isinstance(store, dict)
        and store.get("backend") == "postgres"
        and store.get("synchronous") == "full"
    ):
        # Refused rather than ignored: extmsg cannot promise what the server decides.
        problems.append(
            'store.synchronous: "full" is for SQLite; with PostgreSQL a commit survives'
            " a power loss when the server's synchronous_commit and fsync are on (its"
            " defaults), which extmsg does not change"
        )
    problems += _admin_port_clash(data)

    settings: dict[str, Any] = {}
    seen: set[str] = set()
    for i, ch in enumerate(data.get("channels") or []):
        if not isinstance(ch, dict):
            continue
        where = f"channels[{i}]"
        name = ch.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{where}.name: channel {name!r} is defined twice")
            seen.add(name)
        messenger = ch.get("messenger")
        if not isinstance(messenger, str):
            continue
        mtype = messengers.get(messenger)
        if mtype is None:
            known = ", ".join(sorted(messengers)) or "none installed"
            problems.append(
                f"{where}.messenger: unknown messenger type {messenger!r} (known: {known})"
            )
            continue
        value = _check_struct(
            ch.get("settings") or {}, mtype.settings, f"{where}.settings", problems
        )
        if value is not None and isinstance(name, str):
            settings[name] = value

    # A key whose variable is unset has that one line, not a second one about its empty value.
    problems = [
        p for i, p in enumerate(problems) if i < unset_lines or not _under(_key_of(p), unset)
    ]
    if problems:
        # A problem line never quotes a value today; should one ever, a secret stays out of it.
        secrets = secret_values(data, messengers)
        raise ConfigError([_without(p, secrets) for p in problems], source or "config")
    config = msgspec.convert(data, Config)
    return msgspec.structs.replace(config, source=source, channel_settings=settings)


# The domains reserved for examples (RFC 2606), which ``extmsg init``'s file uses.
_PLACEHOLDER = re.compile(
    r"(?<![\w-])((?:[a-z0-9-]+\.)*example\.(?:com|net|org))(?![\w-])", re.IGNORECASE
)


def placeholder_warnings(config: Config) -> list[str]:
    """One line per value that still names an example domain (``unblu.example.com`` as
    ``extmsg init`` wrote it): such a server starts, but nothing reaches it or it reaches
    nothing. Names only the host, never the value (it may be a DSN with a password)."""
    data = msgspec.to_builtins(config)
    data.pop("source", None)
    data.pop("channel_settings", None)
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            hosts = dict.fromkeys(m.group(1).lower() for m in _PLACEHOLDER.finditer(value))
            if hosts:
                names = ", ".join(hosts)
                found.append(
                    f"{path}: {names} is an example domain (as 'extmsg init' wrote it);"
                    " set the real address"
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, _join(path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(data, "")
    return found


_ANY_HOST = ("", "0.0.0.0", "::")  # noqa: S104 - names of "every interface", compared with


def _admin_port_clash(data: Mapping[str, Any]) -> list[str]:
    """The admin listener on the public listener's port and address: a problem line."""
    server, admin = data.get("server"), data.get("admin")
    server = server if isinstance(server, dict) else {}
    admin = admin if isinstance(admin, dict) else {}
    listen = str(admin.get("listen", ADMIN_LISTEN))
    try:
        host, port = parse_listen(listen)
    except ValueError:
        return []  # reported with the section
    server_host = server.get("host", SERVER_HOST)
    server_port = server.get("port", SERVER_PORT)
    if port == 0 or port != server_port:
        return []
    if host != server_host and host not in _ANY_HOST and server_host not in _ANY_HOST:
        return []
    default = "" if "listen" in admin else " (the default)"
    return [
        f"admin.listen: {listen}{default} is on the server's port {port}; the admin listener "
        "needs a port of its own"
    ]


def secret_values(data: Mapping[str, Any], messengers: Mapping[str, MessengerType]) -> list[str]:
    """Every :data:`~extmsg.models.Secret` value of a config document (parsed TOML, valid
    or not): the sections' secrets, each channel's ``webhook_secret`` and the settings its
    messenger declares secret; for a URL (a DSN) its password too."""
    found: list[Any] = []
    for field in msgspec.structs.fields(Config):
        section = data.get(field.encode_name)
        if isinstance(field.type, type) and issubclass(field.type, _Section):
            found += _secret_fields(section, field.type)
    for ch in data.get("channels") or []:
        if not isinstance(ch, dict):
            continue
        found += _secret_fields(ch, ChannelConfig)
        messenger = ch.get("messenger")
        mtype = messengers.get(messenger) if isinstance(messenger, str) else None
        if mtype is not None:
            found += _secret_fields(ch.get("settings"), mtype.settings)
    values = [v for v in found if isinstance(v, str) and v]
    for value in list(values):
        if "://" in value:
            with contextlib.suppress(ValueError):
                password = urllib.parse.urlsplit(value).password
                if password:
                    values += [password, urllib.parse.unquote(password)]
    return values


def register_config_secrets(config: Config, messengers: Mapping[str, MessengerType]) -> None:
    """Have the log filter redact every secret of ``config`` (see :mod:`extmsg.logsafe`)."""
    register_secrets(secret_values(msgspec.to_builtins(config), messengers))


def _secret_fields(data: Any, cls: type[msgspec.Struct]) -> list[Any]:
    if not isinstance(data, Mapping):
        return []
    return [data.get(f.encode_name) for f in msgspec.structs.fields(cls) if is_secret(f.type)]


def _without(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) < MIN_SECRET_LENGTH:
            break
        text = text.replace(secret, "***")
    return text


def _expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, env, _join(path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _key_of(problem: str) -> str:
    return problem.split(": ", 1)[0]


def _under(key: str, paths: set[str]) -> bool:
    """Whether ``key`` is one of ``paths`` or inside one (``a.b[0]`` is inside ``a.b``)."""
    return any(key == p or key.startswith((p + ".", p + "[")) for p in paths)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_struct(data: Any, cls: type[S], path: str, problems: list[str]) -> S | None:
    """Validate ``data`` against ``cls`` field by field, so every problem gets its own line."""
    if not isinstance(data, dict):
        problems.append(f"{path or '<root>'}: expected a table, got {type(data).__name__}")
        return None
    before = len(problems)
    fields = msgspec.structs.fields(cls)
    names = [f.encode_name for f in fields]
    forbid = getattr(getattr(cls, "__struct_config__", None), "forbid_unknown_fields", False)
    for key in data:
        if key not in names and (forbid or (isinstance(cls, type) and issubclass(cls, _Section))):
            hint = difflib.get_close_matches(key, names, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{_join(path, key)}: unknown key{extra}")
    for field in fields:
        key = field.encode_name
        where = _join(path, key)
        if key not in data:
            if field.required:
                problems.append(f"{where}: required")
            continue
        if key == "channels" and cls is Config:
            items = data[key]
            if not isinstance(items, list):
                problems.append(f"{where}: expected an array of tables ([[channels]])")
                continue
            for i, item in enumerate(items):
                _check_struct(item, ChannelConfig, f"channels[{i}]", problems)
            continue
        if key == "settings" and cls is ChannelConfig:
            continue  # checked against the messenger's own schema
        if isinstance(field.type, type) and issubclass(field.type, _Section):
            _check_struct(data[key], field.type, where, problems)
            continue
        try:
            msgspec.convert(data[key], field.type)
        except msgspec.ValidationError as exc:
            problems.append(_validation_line(where, exc, field.type))
    if len(problems) > before:
        return None
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:  # cross-field checks in __post_init__
        line = _validation_line(path or "<root>", exc, cls)
        # "server: trusted_proxies: ..." names the key as "server.trusted_proxies: ..."
        rest = line.partition(": ")[2]
        key, colon, reason = rest.partition(": ")
        if colon and key in names:
            line = f"{_join(path, key)}: {reason}"
        problems.append(line)
        return None


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[([^\]]*)\]")


def _validation_line(where: str, exc: msgspec.ValidationError, tp: Any) -> str:
    match = _AT.match(str(exc))
    assert match is not None
    msg, at = match.group("msg"), match.group("at") or ""
    line = f"{where}{at}: {msg[0].lower() + msg[1:] if msg else 'invalid'}"
    if msg.startswith("Invalid enum value"):
        allowed = _literal_values(tp, at)
        if allowed:
            line += f" (allowed: {', '.join(repr(v) for v in allowed)})"
    return line


def _literal_values(tp: Any, at: str) -> tuple[Any, ...]:
    """The values of the ``Literal`` that ``at`` (msgspec's ``.field[0]`` path) leads to from
    ``tp``, in their declared order; empty if it leads elsewhere."""
    for step in _STEP.finditer(at):
        tp = _unwrap(tp)
        if step.group(1) is not None:
            if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
                return ()
            hints = typing.get_type_hints(tp, include_extras=True)
            names = {f.encode_name: f.name for f in msgspec.structs.fields(tp)}
            tp = hints.get(names.get(step.group(1), ""))
        else:
            args = typing.get_args(tp)
            if typing.get_origin(tp) in (list, tuple, set, frozenset) and args:
                tp = args[0]
            elif typing.get_origin(tp) is dict and len(args) == 2:
                tp = args[1]
            else:
                return ()
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return ()


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata and, for an optional, without ``None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp
