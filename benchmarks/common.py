"""What the benchmark's processes share: the channel's credentials, signing, ports, percentiles.

The signatures are written out here from the providers' documentation rather than imported
from extmsg, so a request the generator signs is checked by the server's own code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

CHANNEL = "sms"
ACCOUNT_SID = "AC" + "be7c" * 8
AUTH_TOKEN = "bench-auth-token-5f2a9c"  # noqa: S105 - a fake's credential
FROM_NUMBER = "+15005550006"
WEBHOOK_SECRET = "bench-webhook-secret"  # noqa: S105
SANDBOX_USER = "admin"
SANDBOX_PASSWORD = "admin"  # noqa: S105 - the sandbox's documented default

#: Keys are fixed-length: the collectors group receipts by their first PREFIX_LEN characters.
PREFIX_LEN = 8
#: The ``x-unblu-service-name`` of an agent message for a v4 channel.
NEW_MESSAGE_SERVICE = "outbound.external_messenger.new_message"


def contact_number(i: int) -> str:
    return f"+4179{i:07d}"


def key_prefix(kind: str, phase: int) -> str:
    """``SM`` keys are Twilio MessageSids (inbound), ``OB`` keys tag agent messages."""
    return f"{kind}{phase:06x}"


def make_key(prefix: str, seq: int, width: int) -> str:
    return f"{prefix}{seq:0{width - len(prefix)}x}"


def inbound_sid(prefix: str, seq: int) -> str:
    """A Twilio-shaped MessageSid: ``SM`` and 32 hex digits."""
    return make_key(prefix, seq, 34)


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 over the URL and the sorted name+value pairs."""
    data = url + "".join(name + value for name, value in sorted(params))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def unblu_signature_256(secret: str, body: bytes) -> str:
    """``x-unblu-signature-256``: hex HMAC-SHA256 of the raw body with the webhook secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the workers of ``extmsg serve --workers N``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def rss_kib(pid: int) -> int:
    """Resident set size of a process and its children, in KiB (Linux)."""
    total = 0
    for one in [pid, *children(pid)]:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
        else:
            raise RuntimeError(f"no VmRSS for process {one}")
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process, its live children and those it reaped used so far
    (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for one in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # a child that ended meanwhile
        total += int(fields[11]) + int(fields[12])
        if one == pid:
            total += int(fields[13]) + int(fields[14])
    return total / ticks


#: The PostgreSQL server's own processes that work for every database, WAL first.
POSTGRES_SHARED = ("walwriter", "checkpointer", "background writer")


def postgres_cpu(database: str) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by the PostgreSQL server's processes that work for ``database``,
    by process id: ``postgres`` for its backends and autovacuum workers, ``postgres_shared``
    for the WAL writer, checkpointer and background writer every database of the server shares
    (Linux: found by their process titles, ``postgres: [cluster: ]user database host(port)
    state``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if not title.startswith("postgres:"):
                continue
            if database in title.split():
                kind = "postgres"
            elif title.endswith(POSTGRES_SHARED):
                kind = "postgres_shared"
            else:
                continue
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, UnicodeDecodeError):
            continue  # ended meanwhile
        found[int(entry.name)] = kind, (int(fields[11]) + int(fields[12])) / ticks
    return found


def postgres_cpu_since(before: dict[int, tuple[str, float]], database: str) -> dict[str, float]:
    """CPU seconds the processes of :func:`postgres_cpu` used since ``before``, by kind (a
    process that ended meanwhile is missed; extmsg's and the floor's pools keep theirs)."""
    used = {"postgres": 0.0, "postgres_shared": 0.0}
    for pid, (kind, now) in postgres_cpu(database).items():
        used[kind] += now - before.get(pid, (kind, 0.0))[1]
    return used


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy since boot (Linux ``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentiles(
    values: Sequence[float], points: Sequence[float] = (50, 95, 99)
) -> dict[str, float]:
    """Nearest-rank percentiles of ``values`` (empty: NaN)."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        if not ordered:
            out[f"p{p:g}"] = math.nan
            continue
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p:g}"] = ordered[rank - 1]
    return out
