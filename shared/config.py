"""Settings: one pydantic-settings model, every knob an ``IMSTACK_*`` environment variable.

The names and defaults are part of the interface (compose.yaml, scripts and the README
depend on them). ``imstack settings`` prints the reference table the README carries.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "IMSTACK_"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Every setting of the bundle. Field descriptions become the README reference."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db). "
        "Unset: an embedded PostgreSQL server with its data in IMSTACK_DATA_DIR.",
    )
    database_connect_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds to keep retrying the first database connection "
        "(refused or unreachable) before giving up with exit code 2.",
    )
    database_pool_size: int = Field(
        10, ge=1, le=1000, description="Maximum connections in each service's pool."
    )
    data_dir: Path = Field(
        Path("./imstack-data"),
        description="Data folder: the embedded database, generated certificates.",
    )
    domain: str = Field("localhost", min_length=1, description="SIP domain served.")
    imc_domain: str | None = Field(
        None, description="Chat room domain. Unset: conference.<IMSTACK_DOMAIN>."
    )
    sip_host: str = Field(
        "0.0.0.0",
        description="SIP listen address (UDP, TCP and TLS), or an IPv4 and an IPv6 address "
        "separated by a comma to listen on both (0.0.0.0,:: for every address of each).",
    )
    sip_port: Port = Field(5060, description="SIP port, UDP and TCP.")
    sip_tls_port: Port = Field(5061, description="SIP over TLS port (needs a certificate).")
    sip_public_host: str | None = Field(
        None,
        description="Host name or address the relay puts in its Via and Record-Route "
        "headers. Unset: IMSTACK_SIP_HOST (the first of two), or IMSTACK_DOMAIN when it is a "
        "wildcard address (0.0.0.0, ::).",
    )
    sip_nonce_lifetime: float = Field(
        300.0, gt=0, description="Seconds a SIP digest nonce stays valid (then stale=true)."
    )
    sip_delivery_poll_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between polls of the outbound message queue without a NOTIFY.",
    )
    sip_invite_timeout: float = Field(
        180.0,
        gt=0,
        description="Seconds a forwarded INVITE may go on ringing without a final answer "
        "(RFC 3261 Timer C; each provisional response starts it again): then that device's "
        "ringing is CANCELled and counts as 408 Request Timeout.",
    )
    sip_tcp_idle_timeout: float = Field(
        3600.0,
        gt=0,
        description="Seconds before a SIP TCP/TLS connection with no traffic is closed.",
    )
    registrar_min_expires: int = Field(
        60, ge=1, description="Shortest registration accepted (below: 423 + Min-Expires)."
    )
    registrar_max_expires: int = Field(
        3600, ge=1, description="Longest registration granted; longer requests are shortened."
    )
    registrar_default_expires: int = Field(
        3600, ge=1, description="Registration lifetime when the REGISTER asks for none."
    )
    registrar_max_contacts: int = Field(
        10, ge=1, description="Most contacts one address-of-record may register (then 403)."
    )
    outbound_retention: float = Field(
        604800.0,
        ge=0,
        description="Seconds a delivered or failed outbound message is kept as the send log "
        "before the relay deletes it (default 7 days). 0: keep forever.",
    )
    msilo_expire: int = Field(
        259200,
        ge=1,
        description="Seconds an offline message is kept (default 3 days); a MESSAGE's own "
        "Expires lowers it. Expired messages are deleted undelivered.",
    )
    msilo_max_messages: int = Field(
        1000,
        ge=0,
        description="Most offline messages stored per user; further ones are refused with "
        "480 Mailbox Full (senders from other domains need no password, so this bounds what "
        "anyone can make a user's mailbox hold). 0: unlimited (not recommended).",
    )
    msilo_add_date: bool = Field(
        True,
        description="Prefix delivered text/plain offline messages with "
        "'[Offline message - <date stored, UTC>] ' (other content types are never changed).",
    )
    msilo_retry_interval: float = Field(
        300.0,
        gt=0,
        description="Seconds before an offline message the user's client refused is offered "
        "again while the user stays registered (a new registration retries at once).",
    )
    msilo_sweep_interval: float = Field(
        60.0,
        gt=0,
        description="Seconds between msilo's sweeps over registered users with pending "
        "offline messages (covers lost NOTIFYs and due retries).",
    )
    msilo_purge_interval: float = Field(
        600.0, gt=0, description="Seconds between purges of expired offline messages."
    )
    msilo_notice_from: str | None = Field(
        None,
        pattern=r"^sips?:\S+$",
        description="From URI of the notice sent to a local sender whose message was stored "
        "offline (Kamailio's from_address). Unset: no notices.",
    )
    msilo_notice_text: str = Field(
        "{recipient} is offline: your message was stored and will be delivered when they "
        "come back.",
        min_length=1,
        description="Text of the offline notice; {recipient} is replaced by the address.",
    )
    msilo_expiry_notice: bool = Field(
        True,
        description="Tell a local sender, by a MESSAGE from IMSTACK_MSILO_NOTICE_FROM (else "
        "sip:<domain>) naming the recipient, the time stored and the first words, when their "
        "offline message expired undelivered or was given up (IMSTACK_MSILO_MAX_ATTEMPTS). "
        "Stored for them once when they are offline; a notice never causes another notice.",
    )
    msilo_max_attempts: int = Field(
        5,
        ge=0,
        description="Permanent refusals of an offline message by the recipient's client (a "
        "final 4xx-6xx other than 408, 429, 480, 486, 491, 500, 503, 504, 600; timeouts "
        "never count) after which msilo deletes it undelivered, tells the sender "
        "(IMSTACK_MSILO_EXPIRY_NOTICE) and delivers the messages behind it. 0: never.",
    )
    smtp_host: str | None = Field(
        None, description="SMTP server for e-mail notices of stored messages. Unset: no e-mail."
    )
    smtp_port: Port = Field(587, description="SMTP port (587 submission, 465 implicit TLS).")
    smtp_starttls: bool = Field(True, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_tls: bool = Field(False, description="Implicit TLS from the first byte (port 465).")
    smtp_username: str | None = Field(None, description="SMTP login user. Unset: no login.")
    smtp_password: str | None = Field(None, description="SMTP login password.")
    smtp_from: str | None = Field(
        None, description="From address of notices. Unset: imstack@<IMSTACK_DOMAIN>."
    )
    msilo_email_interval: float = Field(
        900.0,
        ge=0,
        description="At most one e-mail notice per user per this many seconds; it summarises "
        "the messages stored since the last one.",
    )
    msilo_email_bodies: bool = Field(
        False, description="Include the text of stored messages in e-mail notices."
    )
    imc_command_char: str = Field(
        "#",
        min_length=1,
        max_length=1,
        pattern=r"^\S$",
        description="Character that starts a chat room command: a MESSAGE to a room whose "
        "body starts with it is a command (#join, #invite, ...), anything else is chat.",
    )
    imc_create_on_join: bool = Field(
        True,
        description="#join of a room that does not exist creates it (public, the joiner "
        "becomes its owner); false: 'Room not found'.",
    )
    imc_poll_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between imc's polls of the room queue and of its delivery "
        "outcomes without a NOTIFY.",
    )
    imc_history: int = Field(
        20,
        ge=0,
        le=1000,
        description="Chat messages kept per room; a member who joins or accepts an "
        "invitation gets them replayed from the room. 0: no history.",
    )
    imc_member_limit: int = Field(
        0,
        ge=0,
        description="Members a chat room may have (owners and admins included, the invited "
        "not), unless the room sets its own limit (API option member_limit); beyond it "
        "#join, #add, #invite and #accept are refused with a notice. 0: no limit.",
    )
    imc_min_interval: float = Field(
        0.5,
        ge=0,
        le=3600,
        description="Flood control: least seconds between two chat messages of one member "
        "in one room; a message sent sooner is not fanned out and the sender is told. "
        "0: off.",
    )
    sip_rate_limit: int = Field(
        100,
        ge=0,
        description="SIP requests one source address may send per IMSTACK_SIP_RATE_WINDOW "
        "(Kamailio's pike); beyond it: 503 + Retry-After over TCP/TLS, silently dropped "
        "over UDP, until the window ends. 0: no limit.",
    )
    sip_rate_window: float = Field(
        2.0, gt=0, description="Seconds of the per-source SIP rate limit window."
    )
    sip_max_connections: int = Field(
        10000,
        ge=0,
        description="Most SIP TCP/TLS connections open at once; further ones are closed "
        "as they are accepted. 0: no limit.",
    )
    sip_max_connections_per_source: int = Field(
        1000,
        ge=0,
        description="Most SIP TCP/TLS connections one IP address may hold at once (0: no "
        "limit); more from it are refused, so no one address can take every slot.",
    )
    sip_max_message_size: int = Field(
        65535,
        ge=1024,
        le=1 << 24,
        description="Largest SIP message accepted, in bytes (header section or body): "
        "larger over TCP/TLS is answered 413 and the connection closed; "
        "over UDP it is dropped.",
    )
    sip_credentials_cache_ttl: float = Field(
        60.0,
        ge=0,
        description="Seconds the SIP edge keeps a user's digest credentials in memory. "
        "Changes made through imstack (CLI, API) apply at once: they NOTIFY the users "
        "channel, and a digest that does not match is checked against the database again. "
        "This limit bounds staleness after a lost notification or a change made with plain "
        "SQL. The same limit applies to what the edge remembers about users' offline "
        "mailboxes being empty (every stored message NOTIFYs). An entry in use is reloaded "
        "in the background before it expires, so requests do not wait for the database. "
        "0: read the database on every request.",
    )
    sip_bindings_cache_ttl: float = Field(
        2.0,
        ge=0,
        description="Seconds the SIP edge reuses an AoR's bindings (or their absence: "
        "an offline user) when routing. Changes made by this relay apply at once, and so "
        "do bindings added by another relay instance (or the control API: a NOTIFY); "
        "bindings removed elsewhere are seen only after this delay. An entry in use is "
        "reloaded in the background before it expires (between half and nine tenths of "
        "this delay), so requests do not wait for the database. 0: read the "
        "locations table for every request (several relays sharing one database and "
        "needing every change at once).",
    )
    msrp_host: str = Field("0.0.0.0", description="MSRP listen address.")
    msrp_port: Port = Field(
        2855,
        description="MSRP port: plain TCP and, when a certificate is configured, TLS "
        "on the same port.",
    )
    tls_cert: Path | None = Field(
        None,
        description="TLS certificate chain (PEM). Unset or empty: TLS listeners are off.",
    )
    tls_key: Path | None = Field(
        None, description="TLS private key (PEM, unencrypted). Set both or neither."
    )
    msrp_allow_insecure_auth: bool = Field(
        False,
        description="Allow MSRP AUTH over plain TCP (RFC 4976 wants TLS). "
        "For development and tests only.",
    )
    msrp_public_host: str | None = Field(
        None,
        description="Host name or address this relay puts in the Use-Path URIs it hands "
        "out (what clients and other relays connect to). Unset: IMSTACK_DOMAIN.",
    )
    msrp_auth_min_expires: int = Field(
        60, ge=1, description="Shortest MSRP AUTH Expires accepted (below: 423 + Min-Expires)."
    )
    msrp_auth_max_expires: int = Field(
        3600,
        ge=1,
        description="Longest MSRP AUTH Expires accepted (above: 423 + Max-Expires); "
        "also granted when the AUTH asks for none.",
    )
    password_min_length: int = Field(
        10,
        ge=1,
        le=1024,
        description="Fewest characters of a password set with `imstack user add`/`passwd` or "
        "through the API (shorter ones are refused, the API answers 422); a password equal to "
        "the user name or address is refused too. 1: any non-empty password. Existing "
        "passwords are not checked.",
    )
    auth_max_failures: int = Field(
        10,
        ge=0,
        description="Failed password checks (SIP or MSRP) for one user from one address "
        "within IMSTACK_AUTH_BLOCK_SECONDS after which that user's credentials from that "
        "address are refused (403) unchecked for a while (0: never).",
    )
    auth_block_seconds: float = Field(
        60.0,
        gt=0,
        description="The window for IMSTACK_AUTH_MAX_FAILURES, and how long the first block "
        "lasts; each repeated block lasts twice as long, at most an hour.",
    )
    msrp_max_auth_failures: int = Field(
        3, ge=1, description="Failed MSRP AUTH attempts after which the connection is closed."
    )
    msrp_nonce_lifetime: float = Field(
        30.0, gt=0, description="Seconds an MSRP digest nonce stays valid."
    )
    msrp_transaction_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the next hop's response to a forwarded request; "
        "then the sender gets a failure REPORT (408).",
    )
    msrp_idle_timeout: float = Field(
        60.0, gt=0, description="Seconds before a connection with no MSRP session is closed."
    )
    msrp_max_connections: int = Field(
        20000, ge=1, description="Most MSRP connections held at once; more are refused."
    )
    msrp_max_connections_per_source: int = Field(
        2000,
        ge=0,
        description="Most MSRP connections one IP address may hold at once (0: no limit); "
        "more from it are refused, so no one address can take every slot.",
    )
    msrp_buffer_limit: int = Field(
        1048576,
        ge=4096,
        description="Bytes buffered for a slow next hop before the relay stops reading from "
        "the sender (back-pressure).",
    )
    msrp_interrupt_bytes: int = Field(
        262144,
        ge=2048,
        description="Body bytes after which a long outgoing chunk is interrupted ('+') when "
        "other messages wait for the same connection; the rest follows as a new chunk.",
    )
    msrp_tls_verify: bool = Field(
        True,
        description="Verify the certificates of relays and endpoints this relay connects to "
        "over msrps.",
    )
    msrp_peer_relays: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host[:port] of the other MSRP relays this relay may "
        "open connections to for a next hop that is not a session of its own (no port: any "
        "port of that host). Unset: none; such SENDs get 403.",
    )
    api_host: str = Field("0.0.0.0", description="Control API listen address.")
    api_port: Port = Field(8000, description="Control API port.")
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API bearer tokens accepted in addition to those "
        "made with `imstack token create`. Unset: only those.",
    )
    api_token_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Seconds the control API keeps a token made with `imstack token create` "
        "it has checked, instead of looking it up in the database on each request: a revoked "
        "token keeps working for at most this long in a running API. 0: looked up each time.",
    )
    api_metrics_public: bool = Field(
        True,
        description="Serve the control API's /metrics without a token (Prometheus scrapers "
        "often have none; it shows aggregate counts and latencies only). false: /metrics "
        "needs a bearer token, read-only scope suffices (401 without one).",
    )
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="Log format: text (human-readable) or json (JSON lines)."
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    shutdown_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds a stopping service waits for in-flight work before aborting it.",
    )
    stats_interval: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds between two writes of each service's counters (and the relay's "
        "live MSRP sessions' byte counts) to the database, where the API's statistics read "
        "them. An instance silent for 3 intervals + 5 s is left out.",
    )

    @field_validator("api_tokens", "msrp_peer_relays", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # ``IMSTACK_TLS_KEY=`` (compose's ``${VAR:-}``) means unset, not the current folder.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("sip_host")
    @classmethod
    def _check_sip_hosts(cls, value: str) -> str:
        hosts = [host.strip() for host in value.split(",")]
        if len(hosts) == 1:
            return hosts[0]
        try:
            versions = sorted(ipaddress.ip_address(host.strip("[]")).version for host in hosts)
        except ValueError:
            versions = []
        if versions != [4, 6]:
            raise ValueError("one address, or an IPv4 and an IPv6 address (0.0.0.0,::)")
        return ",".join(host.strip("[]") for host in hosts)

    @property
    def sip_hosts(self) -> list[str]:
        """The addresses SIP listens on: one, or an IPv4 and an IPv6 one."""
        return self.sip_host.split(",")

    @field_validator("domain")
    @classmethod
    def _lower_domain(cls, value: str) -> str:
        return value.strip().lower()

    @property
    def msrp_host_name(self) -> str:
        """The host in the Use-Path URIs this relay issues."""
        return self.msrp_public_host or self.domain

    @property
    def conference_domain(self) -> str:
        """The domain chat rooms live in."""
        return (self.imc_domain or f"conference.{self.domain}").lower()


class SettingsError(Exception):
    """Invalid configuration, with one readable line per bad variable."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; raise ``SettingsError`` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            value = error.get("input")
            shown = f"={value!r}" if isinstance(value, str | int | float) else ""
            lines.append(f"invalid setting {env_name(field)}{shown}: {error['msg']}")
        raise SettingsError(lines) from None


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    if field == "database_url":
        return "unset (embedded PostgreSQL)"
    if field == "imc_domain":
        return "conference.<domain>"
    default = info.get_default(call_default_factory=True)
    if default is None or default == []:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, StrEnum):
        return default.value
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    return str(default)


def settings_table() -> str:
    """The configuration reference as a Markdown table (kept in the README, checked by a test)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        rows.append(f"| `{env_name(name)}` | `{_default_text(name)}` | {info.description} |")
    return "\n".join(rows) + "\n"
