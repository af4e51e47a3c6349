"""The commented example configuration ``extmsg init`` writes."""

from __future__ import annotations

from collections.abc import Mapping

from .models import MessengerType

EXAMPLE_CONFIG = """\
# extmsg configuration. Validate with: extmsg check --config extmsg.toml
# Any string may read the environment: "${NAME}" or "${NAME:-default}". Keep secrets there.

[server]
host = "0.0.0.0"
port = 8080
# How Unblu and the providers reach this server (behind a proxy: the proxy's URL).
# Signatures are checked against this URL.
public_url = "https://connector.example.com"
# Without public_url, the URL is rebuilt from X-Forwarded-Proto / X-Forwarded-Host, but only
# on requests whose direct peer is listed here (IP addresses or networks; "*" trusts every
# peer: only when nothing but the proxy can reach this port). The proxy must set both headers.
# Empty: forwarded headers are ignored.
trusted_proxies = []
log_level = "INFO"
# "text": one line per record for people; "json": one JSON object per line for a log shipper,
# with time, level, logger, message and, where known, request_id (one id follows a message
# from the webhook that brought it to the call that delivered it), channel, job_id,
# message_id and conversation_id. `extmsg serve --log-format json` overrides it.
log_format = "text"
# What contacts and agents write never reaches a log line (only its length, "[42 chars]");
# true lets hook tracing and error lines quote it (masked, cut): for a test system only.
log_message_text = false
# Server processes sharing this port and the store, each with its own event loop
# (`extmsg serve --workers N` overrides). Unset: one per core with PostgreSQL, one with SQLite
# (its commits take turns on one write lock). Worker 0 also serves [admin] (its /metrics add
# up every worker) and does what runs once: channel provisioning, housekeeping.
# workers = 2
# "auto" runs on uvloop when it is installed (pip install 'extmsg[uvloop]'), else on asyncio's
# own loop; "uvloop" or "asyncio" choose one.
event_loop = "auto"
# Files a provider names by URL (MMS media, ...) are only fetched from public addresses.
# Networks listed here are allowed too, e.g. a media proxy inside your network:
# fetch_allowed_networks = ["10.20.0.0/16"]

[admin]
# /metrics (Prometheus), /-/plugins and the detailed /readyz are served on this listener only,
# apart from the port above that the providers and Unblu call (which answers /healthz and a
# bare /readyz for load balancers). Port 0 takes a free port and logs it.
listen = "127.0.0.1:8081"
# With a token, every admin request needs "Authorization: Bearer <token>" (16+ characters,
# e.g. from `openssl rand -hex 32`). Required when listen is not a loopback address
# (e.g. "0.0.0.0:8081" for a scraper on another host), unless allow_unauthenticated = true
# says that only the network keeps others away from the port.
# token = "${EXTMSG_ADMIN_TOKEN}"

[store]
# Embedded SQLite (WAL); a relative path is relative to this file.
backend = "sqlite"
path = "var/extmsg.sqlite3"
# "normal": every acknowledged message survives a crash of the process (kill -9 included);
# a power loss or a crash of the operating system can drop the last commits, acknowledged
# ones too. "full" syncs the log to disk at every commit, so they survive those as well, at a
# cost in throughput (benchmarks/run.py --synchronous full measures it). SQLite only: with
# PostgreSQL the server's synchronous_commit and fsync decide.
synchronous = "normal"
# Several instances behind a load balancer share one PostgreSQL database instead
# (needs: pip install 'extmsg[postgres]'); they apply its migrations on start.
# backend = "postgres"
# dsn = "${EXTMSG_DATABASE_URL}"  # e.g. postgresql://extmsg:secret@db.example.com/extmsg
# Days after which the message texts and files in finished jobs (done, and dead letters) are
# removed; the jobs stay with their ids and states. 0 keeps them. See docs/data.md, which also
# covers `extmsg contacts forget` (erasing one contact) and `extmsg store backup`.
retention_days = 30

[unblu]
# The web API prefix without the version.
base_url = "https://unblu.example.com/app/rest"
# "v4" for Unblu 8, "v3" for Unblu 6 and 7.
api_version = "v4"
username = "${UNBLU_USERNAME}"
password = "${UNBLU_PASSWORD}"
timeout = 10.0
# Create or update each channel in Unblu when the server starts.
provision = true

[engine]
# Jobs in flight at once (at most one per conversation). They mostly wait on Unblu and the
# providers: raise it when those answer slowly, keep it low to favour quick acknowledgements.
workers = 16
# Finished jobs stay visible in `extmsg outbox list --state done` this long; dead letters stay.
keep_done_hours = 24
max_attempts = 10
backoff_initial = 1.0
backoff_max = 300.0

# One [[channels]] table per messenger account.
[[channels]]
name = "sms"
messenger = "sms_twilio"
# Unblu signs its calls to this channel with this secret.
webhook_secret = "${SMS_WEBHOOK_SECRET}"
# How new conversations open: CHAT_REQUEST, OFFLINE_CHAT_REQUEST, ...
engagement_type = "CHAT_REQUEST"
# Without a recipient the conversation waits in the queue; or name an agent or a team:
# recipient = { type = "TEAM", id = "support-team-id" }
# What the customer sees before an agent's text; {sender} is the agent's name.
sender_prefix = "{sender}: "
sender_fallback = "Support"
# Sent to the customer when the conversation is ended in Unblu (unset: nothing is sent).
# ended_text = "Thanks for writing to us. Reply any time to start a new conversation."
# A message that is just one of these words opts its sender out of (or back into) messages on
# this channel. Unset: the messenger's default (Twilio: its own STOP/START words); [] turns it off.
# opt_out_keywords = ["STOP", "UNSUBSCRIBE"]
# opt_in_keywords = ["START"]
# The confirmation sent back; unset: the messenger's default (none for Twilio, which answers
# its keywords itself); "" sends none.
# opt_out_reply = "You will get no more messages from us here. Reply START to get them again."
# opt_in_reply = "You will get our messages here again."

[channels.settings]
account_sid = "${TWILIO_ACCOUNT_SID}"
auth_token = "${TWILIO_AUTH_TOKEN}"
from_number = "+15005550006"

# [[channels]]
# name = "whatsapp-main"
# messenger = "whatsapp"
# webhook_secret = "${WA_WEBHOOK_SECRET}"
# [channels.settings]
# phone_number_id = "123456789012345"
# access_token = "${WA_ACCESS_TOKEN}"
# app_secret = "${WA_APP_SECRET}"
# verify_token = "${WA_VERIFY_TOKEN}"
# template_name = "reopen_conversation"

# [[channels]]
# name = "mail"
# messenger = "email_smtp"
# webhook_secret = "${MAIL_WEBHOOK_SECRET}"
# [channels.settings]
# address = "support@example.com"
# display_name = "Example Support"
# smtp_host = "smtp.example.com"
# smtp_username = "support@example.com"
# smtp_password = "${SMTP_PASSWORD}"
"""


def example_config(messengers: Mapping[str, MessengerType]) -> str:
    """:data:`EXAMPLE_CONFIG` and, after it, the ``config_example`` of every installed
    messenger it does not show yet (a third-party plugin's channel)."""
    parts = [EXAMPLE_CONFIG]
    for name in sorted(messengers):
        example = messengers[name].config_example.strip("\n")
        if example and f'messenger = "{name}"' not in EXAMPLE_CONFIG:
            parts.append(f"\n# --- {name} (plugin) ---\n{example}\n")
    return "".join(parts)
