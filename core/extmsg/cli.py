"""The ``extmsg`` command line.

A :class:`~extmsg.errors.HandledError` (bad config, broken plugin) is printed as clean
``error:`` lines with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
from aiohttp import web

from . import __version__, logsafe
from .cli_options import CONTEXT_SETTINGS, config_option, load_for_command
from .config import (
    Config,
    parse_config,
    placeholder_warnings,
)
from .errors import ConfigError, HandledError, StoreMissing
from .plugins import Hooks, build_hooks

__all__ = ["main"]

if TYPE_CHECKING:
    from .workers import WorkerRole

log = logging.getLogger("extmsg")


class _Group(click.Group):
    """Prints handled errors as one line each instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HandledError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="extmsg")
def main() -> None:
    """Connect text messengers (SMS, WhatsApp, email, your own) to Unblu."""


# --- plugins, check, init ---------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins, their distributions and the hooks they implement."""
    hooks = build_hooks()
    infos = hooks.plugins()
    if as_json:
        click.echo(msgspec.json.encode(infos).decode())
        return
    for info in infos:
        dist = f"{info.distribution} {info.version}" if info.distribution else "(not installed)"
        tag = " [builtin]" if info.builtin else ""
        click.echo(f"{info.name}{tag}  {dist}")
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
    messengers = hooks.messenger_types()
    click.echo(f"messenger types: {', '.join(sorted(messengers)) or 'none'}")


@main.command()
@config_option()
@click.option(
    "--unblu",
    "online",
    is_flag=True,
    help="Also connect to Unblu and check what the API user may do.",
)
def check(config_path: Path, online: bool) -> None:
    """Validate the configuration and every channel's settings."""
    config, _ = load_for_command(config_path)
    click.echo(
        f"{config_path}: ok ({len(config.channels)} channel(s): "
        f"{', '.join(f'{c.name} ({c.messenger})' for c in config.channels) or 'none'})"
    )
    for line in placeholder_warnings(config):
        click.echo(f"warning: {line}", err=True)
    warning = _admin_warning(config)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if online:
        _check_unblu(config)


def _admin_warning(config: Config) -> str | None:
    admin = config.admin
    if admin.token or admin.loopback:
        return None
    return (
        f"admin.listen: {admin.listen} serves /metrics, /-/plugins and the detailed /readyz "
        "without a token (allow_unauthenticated): only the network keeps others away from it"
    )


def _check_unblu(config: Config) -> None:
    """Whether the API user can look a posted message up (what keeps a crash from doubling a
    contact's message in Unblu)."""
    from .unblu.client import LookupAccess, UnbluClient

    u = config.unblu
    base_url = u.base_url
    if not base_url:
        raise HandledError("unblu.base_url: required to check Unblu")

    async def run() -> LookupAccess:
        async with UnbluClient(
            base_url, u.username, u.password, u.api_version, timeout=u.timeout
        ) as client:
            return await client.check_message_lookup()

    access = asyncio.run(run())
    if access.available is None:
        raise HandledError(f"unblu: {access.detail}")
    if access.available:
        click.echo(
            f"unblu {u.api_version}: ok; a message cut off by a crash is looked up before "
            "it is posted again"
        )
        return
    click.echo(
        f"warning: unblu {u.api_version}: {access.detail}; a contact's message whose post was "
        "cut off by a crash is posted again and may show twice",
        err=True,
    )


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
@config_option("Where to write the configuration (or give PATH).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path | None, config_path: Path, force: bool) -> None:
    """Write a commented example configuration to PATH (with a channel of every installed
    messenger plugin that brings an example)."""
    from .example import example_config

    path = path or config_path

    if path.exists() and not force:
        raise HandledError(f"{path} exists (use --force to overwrite)")
    try:
        messengers = build_hooks().messenger_types()
    except Exception as exc:  # a broken plugin must not keep anyone from a config file
        click.echo(f"warning: plugins not loaded, their examples left out: {exc}", err=True)
        messengers = {}
    path.write_text(example_config(messengers), encoding="utf-8")
    click.echo(f"wrote {path}; edit it, then run: extmsg check --config {path}")


@main.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the distribution (default: ./extmsg-NAME).",
)
def new_plugin(name: str, target: Path | None) -> None:
    """Write a messenger plugin's distribution NAME: the messenger unit, its settings, a
    provider fake, tests (contract suite, recorded payloads, end to end), packaging, README and
    licence. It installs and passes ruff, mypy --strict and its own tests as written."""
    from .scaffold import write_plugin

    target = target or Path(f"extmsg-{name.replace('_', '-')}")
    written = write_plugin(name, target)
    click.echo(f"wrote {len(written)} files to {target}; next:")
    click.echo(f"  cd {target} && pip install -e '.[test]' && pytest && ruff check . && mypy")


# --- serve ------------------------------------------------------------------------------------
@main.command()
@config_option()
@click.option("--host", help="Listen address (overrides [server] host).")
@click.option("--port", type=int, help="Listen port (overrides [server] port).")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Run the Unblu sandbox and the provider fakes in-process and use them.",
)
@click.option("--sandbox-port", type=int, default=8091, show_default=True)
@click.option(
    "--admin-listen",
    metavar="HOST:PORT",
    help="Where /metrics, /-/plugins and the detailed /readyz are served "
    "(overrides [admin] listen).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log as text lines or JSON lines (overrides [server] log_format).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Server processes sharing the port and the store (overrides [server] workers; "
    "default: one per core with PostgreSQL, one with SQLite).",
)
def serve(
    config_path: Path,
    host: str | None,
    port: int | None,
    sandbox: bool,
    sandbox_port: int,
    admin_listen: str | None,
    log_format: str | None,
    workers: int | None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    wanted = [log_format]  # the log format asked for, once known (flag, then the file)
    try:
        _serve_command(
            config_path,
            host,
            port,
            sandbox,
            sandbox_port,
            admin_listen,
            log_format,
            wanted,
            workers,
        )
    except HandledError as exc:
        if "json" not in wanted:
            raise
        # A log shipper reads JSON lines only: a start that fails says why in one too.
        _setup_logging("WARNING", "json")
        for line in str(exc).splitlines() or [type(exc).__name__]:
            log.error("%s", line)
        raise SystemExit(exc.exit_code) from None


def _serve_command(
    config_path: Path,
    host: str | None,
    port: int | None,
    sandbox: bool,
    sandbox_port: int,
    admin_listen: str | None,
    log_format: str | None,
    wanted: list[str | None],
    workers: int | None = None,
) -> None:
    hooks = build_hooks()
    if sandbox and not config_path.exists():
        # The sandbox forgets everything when it stops; so does a store made for it.
        store = Path(tempfile.mkdtemp(prefix="extmsg-sandbox-")) / "store.sqlite3"
        raw: dict[str, Any] = {"server": {}, "store": {"path": str(store)}}
    else:
        import tomllib

        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                [
                    f"{config_path}: no such file (create one with 'extmsg init', "
                    "or try 'extmsg serve --sandbox')"
                ]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{config_path}: not valid TOML: {exc}"]) from None
    server = raw.setdefault("server", {})
    if log_format is None and isinstance(server, dict):
        wanted.append(server.get("log_format"))
    if host:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if admin_listen is not None:
        raw["admin"] = {**(raw.get("admin") or {}), "listen": admin_listen}
    if log_format is not None and isinstance(server, dict):
        server["log_format"] = log_format
    if workers is not None and isinstance(server, dict):
        server["workers"] = workers
    source = str(config_path)
    if sandbox:
        if isinstance(server, dict) and (server.get("workers") or 1) > 1:
            raise HandledError(
                "--sandbox runs in one process (the sandbox lives in it): leave out --workers "
                "and [server] workers"
            )
        _run_loop(_serve(raw, hooks, source, sandbox, sandbox_port), _loop_choice(raw))
        return
    config = parse_config(raw, hooks.messenger_types(), source=source)
    count = config.worker_count()
    if count == 1:
        _run_loop(_serve(raw, hooks, source, False, 0), config.server.event_loop)
        return
    code = _supervise(raw, hooks, source, config, count)
    if code:
        raise SystemExit(code)


def _loop_choice(raw: dict[str, Any]) -> str:
    server = raw.get("server")
    choice = server.get("event_loop") if isinstance(server, dict) else None
    return choice if choice in ("auto", "uvloop", "asyncio") else "auto"


def _run_loop(main: Coroutine[Any, Any, None], choice: str) -> None:
    """Run ``main`` on uvloop or asyncio's own loop (``[server] event_loop``)."""
    factory = _loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise HandledError(
                "server.event_loop: uvloop is not installed (pip install 'extmsg[uvloop]', "
                'or choose "asyncio")'
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _supervise(raw: dict[str, Any], hooks: Hooks, source: str, config: Config, count: int) -> int:
    """Bind the sockets, fork ``count`` workers and look after them (:mod:`extmsg.workers`)."""
    import socket

    from . import workers

    _setup_logging(config.server.log_level, config.server.log_format)
    warning = _admin_warning(config)
    if warning:
        log.warning("%s", warning)
    # The admin port first: one that is taken stops the start before anything runs.
    admin = workers.listen_socket(
        *config.admin.address, reuse_port=False, key="admin.listen", hint="--admin-listen HOST:PORT"
    )
    host, port = config.server.host, config.server.port
    reuse = hasattr(socket, "SO_REUSEPORT")
    publics = [workers.listen_socket(host, port, reuse_port=reuse, key="server", hint="--port")]
    port = publics[0].getsockname()[1]
    for _ in range(count - 1 if reuse else 0):
        publics.append(
            workers.listen_socket(host, port, reuse_port=True, key="server", hint="--port")
        )
    # A port chosen by the system (0) is the one every worker serves and announces.
    raw = {**raw, "server": {**raw.get("server", {}), "port": port}}
    admin_port = admin.getsockname()[1]
    log.info(
        "listening on %s with %d workers; admin (/metrics, /readyz, /-/plugins) on %s",
        _url(host, port),
        count,
        _url(config.admin.address[0], admin_port),
    )

    def run(role: workers.WorkerRole) -> int:
        _run_loop(_serve(raw, hooks, source, False, 0, role), config.server.event_loop)
        return 0

    def ready(seconds: float) -> None:
        log.info("all %d workers ready in %.0f ms", count, seconds * 1000)

    return workers.supervise(
        count,
        run,
        publics=publics,
        admin=admin,
        shutdown_timeout=config.server.shutdown_timeout,
        on_ready=ready,
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(
    raw: dict[str, Any],
    hooks: Hooks,
    source: str,
    sandbox: bool,
    sandbox_port: int,
    role: WorkerRole | None = None,
) -> None:
    from .app import admin_runner, announce_listening, create_app, public_runner, stop_serving
    from .runtime import RUNTIME

    # The sandbox may log before the configuration is read: in the format asked for already.
    server = raw.get("server")
    early = server.get("log_format") if isinstance(server, dict) else None
    _setup_logging("WARNING", early if early in ("text", "json") else "text")
    stop = _stop_event()
    stack = contextlib.AsyncExitStack()
    async with stack:
        if sandbox:
            from .sandbox_mode import start_sandbox

            raw = await start_sandbox(stack, raw, hooks, sandbox_port)
        config = parse_config(raw, hooks.messenger_types(), source=source)
        _setup_logging(config.server.log_level, config.server.log_format)
        logsafe.log_message_text(config.server.log_message_text)
        warning = _admin_warning(config)
        if warning:
            log.warning("%s", warning)
        app = create_app(config, hooks)
        app[RUNTIME].worker = role
        if role is not None:
            # A worker of several: the supervisor bound the sockets (and reported them).
            if role.admin is not None:
                admin = admin_runner(app)
                await admin.setup()
                stack.push_async_callback(admin.cleanup)
                await web.SockSite(admin, role.admin).start()
            runner = public_runner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, role.public).start()
            await announce_listening(app)
            await _until(stop)
            await stop_serving(app, runner)
            return
        # The admin port first: one that is taken stops the start before anything runs.
        admin = admin_runner(app)
        await admin.setup()
        stack.push_async_callback(admin.cleanup)
        admin_url = await _listen(
            admin, *config.admin.address, key="admin.listen", hint="--admin-listen HOST:PORT"
        )
        runner = public_runner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        public_url = await _listen(
            runner, config.server.host, config.server.port, key="server", hint="--port"
        )
        log.info(
            "listening on %s; admin (/metrics, /readyz, /-/plugins) on %s", public_url, admin_url
        )
        if sandbox:
            print(
                f"extmsg: {public_url}  admin (/metrics, /readyz, /-/plugins): {admin_url}",
                flush=True,
            )
        await announce_listening(app)
        await _until(stop)
        await stop_serving(app, runner)


def _stop_event() -> asyncio.Event:
    """Set by SIGTERM or SIGINT (from the start on: one during start-up stops right after)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()
    log.info("shutting down")


async def _listen(runner: web.AppRunner, host: str, port: int, *, key: str, hint: str) -> str:
    """Start a site for ``runner`` on ``host:port``; its URL (with the port taken for 0)."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise HandledError(
            f"{key}: cannot listen on {host}:{port}: {exc.strerror or exc} (choose another "
            f"with {hint})"
        ) from None
    bound = runner.addresses[-1][1]
    return f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"


def _setup_logging(level: str, fmt: str = "text") -> None:
    """One line per record on stderr, text or JSON, secrets redacted and control characters
    escaped (see :mod:`extmsg.logformat`)."""
    from .logformat import configure_logging

    configure_logging(level, "json" if fmt == "json" else "text")


# --- channels ---------------------------------------------------------------------------------
@main.group()
def channels() -> None:
    """Channels and their Unblu counterparts."""


@channels.command("list")
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def channels_list(config_path: Path, as_json: bool) -> None:
    """Show configured channels with their Unblu ids and webhook status."""
    config, _ = load_for_command(config_path)

    async def rows() -> list[dict[str, Any]]:
        from .store import open_store

        store = open_store(config)
        known = {}
        try:
            # Only looks: a store that is not there yet is not made here.
            await store.open(create=False)
        except StoreMissing as exc:
            click.echo(f"note: {exc}; no channel is provisioned yet", err=True)
        else:
            try:
                known = {row.name: row for row in await store.list_channels()}
            finally:
                await store.close()
        out = []
        for ch in config.channels:
            row = known.get(ch.name)
            out.append(
                {
                    "name": ch.name,
                    "messenger": ch.messenger,
                    "unblu_channel_id": row.unblu_channel_id if row else None,
                    "webhook_status": row.webhook_status if row else None,
                    "endpoint": f"{config.server.base_url}/unblu/{ch.name}",
                }
            )
        return out

    data = asyncio.run(rows())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for r in data:
        click.echo(
            f"{r['name']:<20} {r['messenger']:<12} unblu={r['unblu_channel_id'] or '-':<24} "
            f"webhook={r['webhook_status'] or 'not provisioned'}  {r['endpoint']}"
        )


@channels.command("sync")
@config_option()
def channels_sync(config_path: Path) -> None:
    """Create or update every channel in Unblu now."""
    config, hooks = load_for_command(config_path)
    if not config.unblu.base_url:
        raise HandledError("unblu.base_url: required to sync channels")

    async def run() -> dict[str, str]:
        from .runtime import Runtime
        from .unblu.client import UnbluClient
        from .unblu.provisioning import provision_channels

        runtime = Runtime(config, hooks)
        await runtime.store.open()
        u = config.unblu
        runtime.unblu = UnbluClient(
            u.base_url or "", u.username, u.password, u.api_version, timeout=u.timeout
        )
        try:
            return await provision_channels(runtime)
        finally:
            await runtime.unblu.close()
            await runtime.store.close()

    for name, channel_id in asyncio.run(run()).items():
        click.echo(f"{name}: Unblu channel {channel_id}")


# --- sandbox ----------------------------------------------------------------------------------
@main.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8091, show_default=True)
@click.option("--username", default="admin", show_default=True)
@click.option("--password", default="admin", show_default=True)
def sandbox_cmd(host: str, port: int, username: str, password: str) -> None:
    """Run the Unblu sandbox alone (web API under /app/rest, console under /sandbox/)."""
    from .sandbox import run_sandbox

    async def run() -> None:
        _setup_logging("INFO")
        server = await run_sandbox(host, port, username=username, password=password)
        click.echo(f"Unblu sandbox: web API {server.base_url}, console {server.url}/sandbox/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(run())


def _register_optional_commands() -> None:
    from .engine.cli import outbox
    from .forget import contacts
    from .store.backup import store

    main.add_command(outbox)
    main.add_command(contacts)
    main.add_command(store)


_register_optional_commands()
