"""The ``interlink`` command."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer

from engine import hl7v2
from engine.errors import ConfigError, HL7Error, explain
from engine.settings import Settings

if TYPE_CHECKING:
    import ssl

    from engine.config.channel import Channel
    from engine.runtime import Engine
    from engine.store import Store
    from engine.transform import MappingSet
    from engine.transform.pool import Job

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Interlink healthcare integration engine.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and replay dead letters.")
messages_app = typer.Typer(no_args_is_help=True, help="Inspect stored messages.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(messages_app, name="messages")
token_app = typer.Typer(no_args_is_help=True, help="Admin API tokens (shown once; stored hashed).")
app.add_typer(token_app, name="token")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Settings file (default config/engine.yaml).")]


def _settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _store(config: Path | None) -> Store:
    """The configured store. Outside a project folder (no settings file found) an SQLite store that does
    not exist yet is not created: the command says which settings file it looked for instead."""
    from engine.settings import DEFAULT_CONFIG
    from engine.store import Store

    settings = _settings(config)
    found = config is not None or bool(os.environ.get("INTERLINK_CONFIG")) or DEFAULT_CONFIG.exists()
    url = settings.database_url
    if not found and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        _fail(
            f"no settings file found (looked for {DEFAULT_CONFIG} in this folder, --config, INTERLINK_CONFIG)"
            f" and no message store at {url.removeprefix('sqlite:///')}: run this in the project folder or pass"
            " --config"
        )
    return Store(url)


def engine_url(s: Settings) -> str:
    """The base URL of the running engine's HTTP server (webhooks, admin API) as the settings name it."""
    host = "127.0.0.1" if s.http_host in ("0.0.0.0", "::", "") else s.http_host
    return f"{'https' if s.http_tls else 'http'}://{f'[{host}]' if ':' in host else host}:{s.http_port}"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"interlink {version('interlink')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Interlink healthcare integration engine."""


@app.command()
def run(
    config: ConfigOpt = None,
    workers: Annotated[
        bool | None,
        typer.Option(
            "--workers/--no-workers",
            help="Run workers in this process (default: yes with memory://, no with a shared queue).",
        ),
    ] = None,
) -> None:
    """Run the engine: channels listen; workers process and deliver (in-process with memory://)."""
    from engine.observability import setup_logging
    from engine.runtime import Engine

    settings = _settings(config)
    setup_logging(settings)
    if workers is None:
        workers = settings.queue_url.startswith("memory://")
    elif not workers and settings.queue_url.startswith("memory://"):
        _fail("--no-workers needs a shared queue (redis://… or amqp://…)")
    try:
        engine = Engine(settings, workers=workers)
    except ConfigError as exc:
        _fail(str(exc))
    _serve(engine)


@app.command()
def worker(config: ConfigOpt = None) -> None:
    """Run workers only (for a shared redis:// or amqp:// queue)."""
    from engine.observability import setup_logging
    from engine.runtime import Engine

    settings = _settings(config)
    setup_logging(settings)
    if settings.queue_url.startswith("memory://"):
        _fail(
            "interlink worker needs a shared queue (queue_url redis://… or amqp://…); memory:// runs in `interlink run`"
        )
    try:
        engine = Engine(settings, sources=False, workers=True, sweeper=True)
    except ConfigError as exc:
        _fail(str(exc))
    _serve(engine)


def _serve(engine: Engine) -> None:
    """Run the engine until SIGINT/SIGTERM; a start-up failure (a port in use) is one line and exit 1."""
    from engine import allocator
    from engine.errors import ListenError

    allocator.configure()
    try:
        asyncio.run(engine.serve())
    except (ListenError, ConfigError) as exc:
        _fail(str(exc))


@app.command()
def check(
    paths: Annotated[list[Path] | None, typer.Argument(help="Channel files or folders (default: channels/).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate channel files and compile their mappings (every input kind); exit 1 on any error (warnings do
    not fail)."""
    from engine.runtime import input_kind, load_config

    settings = _settings(config)
    try:
        channels, mappings = load_config(settings, paths)
    except ConfigError as exc:
        _fail(str(exc))
    problems = []
    for c in channels:
        kind = input_kind(c)
        if kind != "hl7v2" and kind not in mappings.kinds:
            problems.append(f"channel {c.name}: no {kind} maps (mappings/{kind}/)")
            continue
        typer.echo(f"ok  channel {c.name} ({c.source.type} → {', '.join(d.name for d in c.destinations)})")
        if not c.identifiers.declares_default:
            typer.echo(
                f"warning: channel {c.name} declares no default assigning authority (identifiers:): "
                f"{_WITHOUT_AUTHORITY.get(kind, _WITHOUT_AUTHORITY['hl7v2'])} will be refused",
                err=True,
            )
    if problems:
        _fail("\n".join(problems))
    typer.echo(f"ok  {len(mappings.message_types)} message type(s) mapped: {', '.join(sorted(mappings.message_types))}")
    for kind, maps in sorted(mappings.kinds.items()):
        typer.echo(f"ok  {kind}: {len(maps.message_types)} type(s) mapped: {', '.join(sorted(maps.message_types))}")


#: what a channel of each input kind refuses when it declares no default assigning authority
_WITHOUT_AUTHORITY = {
    "hl7v2": "messages whose PID-3, PV1-19 or order numbers come without one",
    "dicom": "studies whose PatientID (0010,0020) comes without an Issuer of Patient ID",
}


@app.command()
def convert(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="A file holding one HL7 v2 message, or one JSON event (.json); or DICOM files and folders "
            "forming one study."
        ),
    ],
    channel: Annotated[
        str | None, typer.Option(help="Use this channel's mapping, charset, time zone and default authority.")
    ] = None,
    calling_ae: Annotated[
        str, typer.Option(help="DICOM: the calling AE title the study comes from (the channel's default keys on it).")
    ] = "",
    config: ConfigOpt = None,
) -> None:
    """Print the FHIR Bundle (JSON) a message, or a DICOM study, becomes, without delivering it."""
    from dataclasses import replace

    from engine.config.channel import load_channels
    from engine.runtime import input_kind
    from engine.sources.dicom_files import is_dicom_file
    from engine.transform.mappingset import load_site_mappings
    from engine.transform.pool import Job, map_one

    settings = _settings(config)
    try:
        mappings = load_site_mappings(settings)
        ch = None
        if channel:
            found = [c for c in load_channels([settings.channels_dir]) if c.name == channel]
            if not found:
                _fail(f"no channel named {channel!r} in {settings.channels_dir}")
            ch = found[0]
    except ConfigError as exc:
        _fail(str(exc))
    if (ch is not None and input_kind(ch) == "dicom") or any(f.is_dir() or is_dicom_file(f) for f in files):
        job = _dicom_job(files, ch, calling_ae)
        file = files[0] if len(files) == 1 else Path("study")
    else:
        if len(files) != 1:
            _fail("a message is one file (several files convert together as one DICOM study)")
        file = files[0]
        try:
            raw = file.read_bytes()
        except OSError as exc:
            _fail(f"{file}: cannot read ({exc.strerror})")
        if ch:
            job = Job(raw, getattr(ch.source, "charset", "utf-8"), ch.mapping, ch.validation, ch.timezone,
                      ch.identifiers)  # fmt: skip
        else:
            job = Job(raw, "utf-8", None, "full")
        if (
            file.suffix.lower() == ".json"
        ):  # a JSON event (its JSON map by its type), or FHIR when it names a resourceType
            kind = "fhir" if b'"resourceType"' in raw[:4096] else "json"
            job = replace(job, kind=kind, event_type=getattr(ch.source, "event_type", "type") if ch else "type")
    mapped = map_one(mappings, job)
    if mapped.error is not None:
        _fail(f"{file}: {explain(mapped.error)}")
    if mapped.bundle is None:
        _fail(f"{file}: the mapping produced no resources")
    sys.stdout.buffer.write(orjson.dumps(orjson.loads(mapped.bundle), option=orjson.OPT_INDENT_2) + b"\n")


def _dicom_job(paths: list[Path], ch: Channel | None, calling_ae: str) -> Job:
    """The mapping job of DICOM files as one study, read and assembled as the DICOM source does."""
    from engine.sources.dicom_files import FileRefused, instance_files, study_from_files
    from engine.transform.pool import Job

    files, _ = instance_files(paths)
    if not files:
        _fail("no DICOM files found in " + ", ".join(map(str, paths)))
    try:
        raw = study_from_files(files, calling_ae)
    except FileRefused as exc:
        _fail(f"{files[exc.index]}: {exc.location or 'dataset'}: {exc.message} (the DICOM source answers 0xC000)")
    except OSError as exc:
        _fail(f"cannot read ({exc.strerror})")
    if ch is None:
        return Job(raw, "", None, "full", kind="dicom")
    return Job(raw, "", ch.mapping, ch.validation, ch.timezone, ch.identifiers, kind="dicom")


@app.command("test")
def test_mappings(
    channel: Annotated[
        str | None,
        typer.Option(help="Cases without their own `identifiers:` use this channel's default authority."),
    ] = None,
    unmapped: Annotated[
        bool,
        typer.Option(
            "--unmapped", help="Instead: per message type, the fields of the test messages that no rule reads."
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run every mapping's sibling test cases (or, with --unmapped, report what the maps drop)."""
    from engine.config.channel import load_channels
    from engine.transform.mappingset import load_site_mappings
    from engine.transform.testing import run_mapping_tests

    settings = _settings(config)
    identifiers = None
    try:
        mappings = load_site_mappings(settings)
        if channel:
            found = [c for c in load_channels([settings.channels_dir]) if c.name == channel]
            if not found:
                _fail(f"no channel named {channel!r} in {settings.channels_dir}")
            identifiers = found[0].identifiers
    except ConfigError as exc:
        _fail(str(exc))
    if unmapped:
        _print_unmapped(mappings)
        return
    results = run_mapping_tests(mappings, identifiers=identifiers)
    failed = [r for r in results if not r.passed]
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        typer.echo(f"{mark} {r.file}:{r.line} {r.name}")
        for f in r.failures:
            typer.echo(f"       {f}")
    typer.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed or not results:
        raise typer.Exit(1)


def _print_unmapped(mappings: MappingSet) -> None:
    """Per message type: the places its sibling-test messages send that no rule reads (names, never values)."""
    from engine.transform.testing import collect_mapping_tests
    from engine.transform.unmapped import by_message_type

    def order(place: str) -> tuple[str, int, int]:
        seg, _, rest = place.partition("-")
        fld, _, comp = rest.partition(".")
        return seg, int(fld), int(comp or 0)

    for key, (n, counts) in by_message_type(mappings, collect_mapping_tests(mappings.roots)).items():
        places = ", ".join(f"{p} ({counts[p]})" if counts[p] != n else p for p in sorted(counts, key=order))
        typer.echo(f"{key}, {n} message(s): {places or 'every field sent is read'}")


@app.command()
def send(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Message files, one message or one HL7 batch (FHS/BHS) each (HL7 v2; for webhook channels also JSON)."
        ),
    ],
    channel: Annotated[
        str | None,
        typer.Option(help="Send to this channel: its MLLP port, its webhook URL (signed), or its DICOM port and AE."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="MLLP or DICOM host (default: 127.0.0.1; DICOM: the channel's address).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="MLLP or DICOM port (default: the channel's, else 2575).")] = None,
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for each ACK or C-STORE response.")] = 30.0,
    associations: Annotated[
        int, typer.Option(min=1, max=32, help="DICOM: concurrent associations the files are shared among.")
    ] = 1,
    calling_ae: Annotated[str, typer.Option(help="DICOM: this sender's AE title.")] = "INTERLINK-SCU",
    tls: Annotated[bool, typer.Option("--tls", help="MLLP over TLS (implied by --ca, --cert, a TLS channel).")] = False,
    ca: Annotated[
        Path | None,
        typer.Option(
            help="MLLP TLS: PEM CA certificates to trust (default: the system's; with "
            "--channel, the channel's own cert_file)."
        ),
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="MLLP mutual TLS: this sender's PEM certificate (chain).")] = None,
    key: Annotated[
        Path | None, typer.Option(help="MLLP mutual TLS: the private key of --cert (default: in it).")
    ] = None,
    reconnects: Annotated[
        int, typer.Option(min=0, help="MLLP: times in a row to reconnect and resend a message left without ACK.")
    ] = 3,
    config: ConfigOpt = None,
) -> None:
    """Send message files over MLLP (TLS and mutual TLS with --tls/--ca/--cert/--key or the channel's TLS)
    and print each file's acknowledgement as it arrives, reconnecting when the connection drops; to a webhook
    channel, sign (Standard Webhooks, with the channel's secret) and POST each file over HTTP and print each
    answer; to a DICOM channel, C-STORE each instance (files, or folders walked) as it is on disk and print each
    response status."""
    found: list[Channel] = []
    if channel:
        from engine.config.channel import load_channels

        found = [c for c in load_channels([_settings(config).channels_dir]) if c.name == channel]
        if not found:
            _fail(f"no channel named {channel!r}")
        if found[0].source.type == "dicom":
            _send_dicom(found[0], files, host, port, timeout_s, associations, calling_ae)
            return
    if port is None:
        port = 2575
        if channel:
            if found[0].source.type == "webhook":
                _send_webhook(_settings(config), found[0], files, timeout_s)
                return
            port = getattr(found[0].source, "port", None)
            if port is None:
                _fail(f"channel {channel!r} has no TCP port to send to ({found[0].source.type} source)")
    payloads = []
    for f in files:
        try:
            payloads.append(f.read_bytes().lstrip(b"\xef\xbb\xbf").replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
        except OSError as exc:
            _fail(f"{f}: cannot read ({exc.strerror})")
    host = host or "127.0.0.1"
    context = _mllp_tls(found[0] if found else None, tls, ca, cert, key)
    _send_mllp(host, port, files, payloads, timeout_s, context, reconnects)


def _mllp_tls(
    channel: Channel | None, tls: bool, ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext | None:
    """The client TLS context ``send`` asks for (None: plain TCP): trusting ``ca`` (else a TLS channel's own
    certificate, else the system's CAs), presenting ``cert``/``key`` for mutual TLS."""
    import ssl

    from engine.config.tls import describe

    channel_tls = getattr(channel.source, "tls", None) if channel is not None else None
    if key is not None and cert is None:
        _fail("--key needs --cert")
    if not (tls or ca or cert or channel_tls):
        return None
    if channel is not None and channel_tls is not None and channel_tls.require_client_cert and cert is None:
        _fail(f"channel {channel.name!r} requires a client certificate: pass --cert (and --key)")
    cafile = ca or (channel_tls.cert_file if channel_tls is not None else None)
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        _fail(f"--ca: cannot load {cafile}: {describe(exc)}")
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            _fail(f"--cert/--key: cannot load: {describe(exc)}")
    return context


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on standard error while it is a terminal (lines printed meanwhile show above it);
    yields the function that advances it by a number of items."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task("send", total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield advance


def _send_mllp(
    host: str,
    port: int,
    files: list[Path],
    payloads: list[bytes],
    timeout_s: float,
    tls: ssl.SSLContext | None,
    reconnects: int,
) -> None:
    """Send each file on one MLLP connection, printing its ACK as it arrives; a connection lost before an ACK
    is opened again and that file resent (``engine.sources.mllp_client.send``). Exit 1 when any was refused."""
    import ssl

    from engine.config.tls import describe
    from engine.sources.mllp_client import send as mllp_send

    bad = 0
    with _progress("MLLP", len(files)) as advance:

        def on_reply(i: int, reply: bytes) -> None:
            nonlocal bad
            code, text = _ack_code(reply)
            bad += code not in ("AA", "CA")
            typer.echo(f"{files[i]}: {code}" + (f" {text}" if text else ""))
            advance(1)

        def on_reconnect(i: int, exc: BaseException) -> None:
            why = f"{exc or type(exc).__name__}"
            if isinstance(exc, ConnectionRefusedError):  # nothing was sent on this attempt
                typer.echo(f"{files[i]}: cannot connect to {host}:{port} ({why}); trying again", err=True)
                return
            typer.echo(f"{files[i]}: no ACK ({why}); reconnecting to {host}:{port} to send it again (if it was "
                       "stored, the engine recognises its MSH-10 and keeps it as a duplicate)", err=True)  # fmt: skip

        try:
            mllp_send(host, port, payloads, timeout_s=timeout_s, tls=tls, reconnects=reconnects,
                      on_reply=on_reply, on_reconnect=on_reconnect)  # fmt: skip
        except ssl.SSLError as exc:
            _fail(f"cannot send to {host}:{port}: TLS: {describe(exc)}")
        except OSError as exc:
            _fail(f"cannot send to {host}:{port}: {exc}")
    if bad:
        raise typer.Exit(1)


def _send_dicom(
    channel: Channel,
    paths: list[Path],
    host: str | None,
    port: int | None,
    timeout_s: float,
    associations: int,
    calling_ae: str,
) -> None:
    """C-STORE files (folders walked) to a DICOM channel, one line per file as its response arrives, with a
    progress bar on a terminal; exit 1 when any was not stored."""
    from engine.sources.dicom_client import StoreResult, send_files
    from engine.sources.dicom_files import instance_files

    source = channel.source
    host = host or str(getattr(source, "host", "127.0.0.1"))
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    port = port or int(getattr(source, "port", 0))
    files, skipped = instance_files(paths)
    if skipped:
        typer.echo(f"{skipped} file(s) in the folders are not DICOM files (no DICM preamble): not sent", err=True)
    if not files:
        _fail("no DICOM files to send")
    tls_config = getattr(source, "tls", None)
    tls = None
    if tls_config is not None:
        import ssl

        tls = ssl.create_default_context(cafile=str(tls_config.cert_file))
    with _progress("C-STORE", len(files)) as advance:

        def on_result(r: StoreResult) -> None:
            typer.echo(f"{r.path}: {r.line()}")
            advance(1)

        results = send_files(host, port, files, called_ae=str(getattr(source, "ae_title", "")), calling_ae=calling_ae,
                             associations=associations, tls=tls, timeout_s=timeout_s, on_result=on_result)  # fmt: skip
    bad = sum(not r.stored for r in results)
    typer.echo(f"{len(results) - bad} stored, {bad} failed ({host}:{port}, AE {getattr(source, 'ae_title', '')})")
    if bad:
        raise typer.Exit(1)


def _send_webhook(settings: Settings, channel: Channel, files: list[Path], timeout_s: float) -> None:
    """POST each file to a webhook channel of the running engine, signed when the channel wants signatures; one
    line per file as its answer arrives, with a progress bar on a terminal."""
    from engine.sources.webhook_client import post_files

    bad = 0
    with _progress("POST", len(files)) as advance:

        def on_answer(i: int, status: int, text: str) -> None:
            nonlocal bad
            bad += not 200 <= status < 300
            typer.echo(f"{files[i]}: {status} {text}")
            advance(1)

        try:
            post_files(settings, channel, files, timeout_s=timeout_s, on_answer=on_answer)
        except (ConfigError, OSError) as exc:
            _fail(str(exc))
    if bad:
        raise typer.Exit(1)


def _ack_code(reply: bytes) -> tuple[str, str]:
    from engine.sources import hl7_batch

    if hl7_batch.is_batch(reply):  # a batch file was sent as one frame: its batch acknowledgement
        return _batch_ack_code(reply)
    try:
        msg = hl7v2.Message.parse(reply.decode("utf-8", "replace"))
        msa = msg.first("MSA")
    except HL7Error:
        return "??", "unreadable reply"
    if msa is None:
        return "??", "reply has no MSA"
    return msa.field(1), hl7v2.unescape(msa.field(3), msg.delimiters)  # the text as written, not its escapes


def _batch_ack_code(reply: bytes) -> tuple[str, str]:
    """A batch acknowledgement summed up: AA when no ACK in it is negative, else the first negative code, how
    many, and their reasons (engine texts naming places; no control ids)."""
    from engine.sources import hl7_batch

    try:
        acks = [_ack_code(m) for m in hl7_batch.split(reply, max_messages=1_000_000).messages]
    except HL7Error:
        return "??", "unreadable batch reply"
    bad = [(code, text) for code, text in acks if code not in ("AA", "CA")]
    if not bad:
        return "AA", f"batch accepted ({len(acks)} ACKs, none negative)"
    reasons = "; ".join(dict.fromkeys(text for _, text in bad if text))
    return bad[0][0], f"batch: {len(bad)} not accepted" + (f": {reasons}" if reasons else "")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@messages_app.command("list")
def messages_list(
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 50,
    config: ConfigOpt = None,
) -> None:
    """List stored messages, newest first."""
    for r in _store(config).list_messages(channel=channel, status=status, limit=limit):
        err = f"  {r.error}" if r.error else ""
        typer.echo(f"{r.id}  {_when(r.received_at)}  {r.channel:<14} {r.message_type:<9} {r.status:<11}{err}")


@messages_app.command("search")
def messages_search(
    mrn: Annotated[str | None, typer.Option(help="A patient identifier (PID-3, Patient.identifier).")] = None,
    accession: Annotated[str | None, typer.Option(help="An accession, filler or placer order number.")] = None,
    control_id: Annotated[str | None, typer.Option(help="The sender's control id (MSH-10).")] = None,
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Message type: ORU^R01, or ORU for every event.")] = None,
    sender: Annotated[str | None, typer.Option(help="Sender as stored (MSH-3|MSH-4).")] = None,
    since: Annotated[str | None, typer.Option(help="Received since: ISO 8601 time or an age (30m, 2h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (same forms).")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first, at most 200).")] = 50,
    config: ConfigOpt = None,
) -> None:
    """Find stored messages by patient identifier, order number, control id and more: metadata only."""
    from engine.api.admin.messages import parse_time
    from engine.store.search import BadQuery, MessageQuery, search

    store = _store(config)
    try:
        q = MessageQuery(
            channel=channel, status=status, message_type=type_, control_id=control_id, mrn=mrn,
            accession=accession, sender=sender, limit=limit,
            since=parse_time(since, "since") if since else None, until=parse_time(until, "until") if until else None,
        )  # fmt: skip
        page = search(store, q)
    except BadQuery as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc.message}")
    if mrn or accession:  # who looked a patient up (the filter names, never their values)
        _audit(
            store,
            "message.search",
            [r.id for r in page.rows],
            target=" ".join(n for n, v in (("mrn", mrn), ("accession", accession)) if v),
        )
    for r in page.rows:
        dests = ",".join(f"{d}:{s}" for d, s in page.deliveries.get(r.id, []))
        err = f"  {r.error}" if r.error else ""
        typer.echo(f"{r.id}  {_when(r.received_at)}  {r.channel:<14} {r.message_type:<9} {r.status:<11}"
                   f" {r.control_id:<20} {dests}{err}")  # fmt: skip
    if page.next_cursor:
        typer.echo(f"(more: raise --limit or narrow the search; {len(page.rows)} shown)", err=True)


def _audit(store: Store, action: str, message_ids: list[str], target: str = "") -> None:
    """The audit row of what the local CLI read (token id '': the CLI; actor: the user running it)."""
    import getpass

    from engine.store.access import AuditTrail

    AuditTrail(store).append(token_id="", actor=getpass.getuser(), role="local", action=action, target=target,
                             message_ids=message_ids, peer="cli")  # fmt: skip


def _message_id(store: Store, given: str) -> str:
    """The id of the message ``given`` names: the whole id or a unique prefix (8 hex digits or more)."""
    from engine.store.search import AmbiguousId, BadQuery, UnknownId, resolve_id

    try:
        return resolve_id(store, given)
    except BadQuery as exc:
        _fail(exc.message)
    except UnknownId:
        _fail(f"no message {given}")
    except AmbiguousId:
        _fail(f"more than one message starts with {given}: give more digits")


@messages_app.command("show")
def messages_show(
    message_id: Annotated[str, typer.Argument(help="Message id, or a unique prefix of it (8 digits or more).")],
    content: Annotated[bool, typer.Option(help="Also print the raw and transformed content (PHI!).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Show one message: status, deliveries and attempts."""
    store = _store(config)
    message_id = _message_id(store, message_id)
    m = store.message(message_id)
    if m is None:
        _fail(f"no message {message_id}")
    typer.echo(f"message {m.id}\n  channel {m.channel}  type {m.message_type}  status {m.status}")
    typer.echo(f"  received {_when(m.received_at)} from {m.peer}  control id {m.control_id}  {m.size_bytes} bytes")
    if m.duplicate_of:
        typer.echo(f"  duplicate of {m.duplicate_of}")
    if m.error:
        typer.echo(f"  error: {m.error}")
    for d in store.deliveries_of(message_id):
        typer.echo(
            f"  delivery {d.destination}: {d.status}, {d.attempts} attempt(s), "
            f"last: {d.last_status_code or '-'} {d.last_error or ''}"
        )
    for a in store.attempts_of(message_id):
        typer.echo(
            f"    attempt {a.number} → {a.destination}: {a.outcome} {a.status_code or ''} "
            f"{a.duration_ms:.0f} ms {a.error or ''}"
        )
    if content:
        _show_content(store, m)


def _show_content(store: Store, m: Any) -> None:
    """Raw content (HL7 v2 one segment per line, JSON indented) and the bundle, indented; the read audited."""
    from engine.api.admin.messages import raw_view
    from engine.store import ContentKind

    _audit(store, "message.read", [m.id])
    raw = store.content(m.id, ContentKind.raw)
    if raw is not None:
        view = raw_view(raw, m.kind, m.charset)
        typer.echo(f"--- raw ({view['format']})")
        if "segments" in view:
            typer.echo("\n".join(view["segments"]))
        elif "text" in view:
            typer.echo(view["text"])
        else:
            body = {k: v for k, v in view.items() if k != "format"}
            typer.echo(orjson.dumps(body.get("json", body), option=orjson.OPT_INDENT_2).decode())
    bundle = store.content(m.id, ContentKind.transformed)
    if bundle is not None:
        typer.echo("--- transformed")
        typer.echo(orjson.dumps(orjson.loads(bundle), option=orjson.OPT_INDENT_2).decode())


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")] = False,
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Remove finished messages past their channel's retention (content_days, metadata_days), in small
    batches; never an unfinished or dead-lettered message. Prints counts per channel."""
    from engine.config.channel import load_channels
    from engine.store.retention import Pruner, describe

    settings = _settings(config)
    try:
        channels = load_channels([settings.channels_dir]) if settings.channels_dir.exists() else []
    except ConfigError as exc:
        _fail(str(exc))
    store = _store(config)
    report = Pruner(store, settings.retention, lambda: channels).prune(dry_run=dry_run, channel=channel)
    for line in describe(report, dry_run=dry_run):
        typer.echo(line)


@app.command()
def corpus(
    folder: Annotated[Path, typer.Argument(help="Corpus folder: HL7 v2 messages, some with <name>.expected.json.")],
    report: Annotated[
        Path, typer.Option(help="Where every disagreement is written (Markdown, with both sides' values).")
    ] = Path("conformance-report.md"),
    departures: Annotated[
        Path, typer.Option(help="Markdown file whose departures table lists the peer's departures from the IG.")
    ] = Path("docs/conformance.md"),
    min_agreement: Annotated[
        float | None, typer.Option(help="Exit 1 when the overall agreement (percent) is below this.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Map every corpus message and compare key facts with the peer's expected bundles (docs/conformance.md)."""
    from engine.transform.conformance import compare_corpus, read_departures
    from engine.transform.mappingset import load_site_mappings

    settings = _settings(config)
    if not folder.is_dir():
        _fail(f"{folder}: not a folder")
    try:
        mappings = load_site_mappings(settings)
    except ConfigError as exc:
        _fail(str(exc))
    result = compare_corpus(folder, mappings, departures=read_departures(departures))
    result.write(report)
    typer.echo(result.summary())
    typer.echo(f"disagreements written to {report}")
    overall = result.overall()
    if min_agreement is not None and (overall is None or overall * 100 < min_agreement):
        raise typer.Exit(1)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer (counters, metadata), operator (content, replay), admin (all).")],
    name: Annotated[str, typer.Option(help="What the token is for (shown in listings and the audit trail).")] = "",
    config: ConfigOpt = None,
) -> None:
    """Create an admin API token, straight on the store (no engine needed); the token is the last line."""
    from engine.store.access import ROLES, Tokens

    if role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}")
    if len(name) > 100:
        _fail("--name: at most 100 characters")
    store = _store(config)
    token, secret = Tokens(store).create(role, name)
    _audit(store, "token.create", [], target=token.id)
    typer.echo(f"token {token.id} ({token.role}, {token.name}) created; it is shown only now:")
    typer.echo(secret)


@token_app.command("list")
def token_list(config: ConfigOpt = None) -> None:
    """List tokens (never their secrets)."""
    from engine.store.access import Tokens

    for t in Tokens(_store(config)).list():
        used = _when(t.last_used_at) if t.last_used_at else "never used"
        revoked = f"  revoked {_when(t.revoked_at)}" if t.revoked_at else ""
        typer.echo(f"{t.id}  {t.role:<8} {t.name:<24} created {_when(t.created_at)}  {used}{revoked}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `interlink token list`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: refused from now on (kept in the list, for the audit trail)."""
    from engine.store.access import Tokens

    store = _store(config)
    tokens = Tokens(store)
    if not tokens.revoke(token_id):
        _fail(f"no token {token_id}" if tokens.get(token_id) is None else f"token {token_id} is already revoked")
    _audit(store, "token.revoke", [], target=token_id)
    typer.echo(f"token {token_id} revoked")


@token_app.command("users")
def token_users(config: ConfigOpt = None) -> None:
    """List the names tokens were given to (the admin API's users): live roles, live/revoked counts, dates."""
    from engine.store.access import Tokens
    from engine.store.users import users

    for u in users(Tokens(_store(config))):
        used = _when(u.last_used_at) if u.last_used_at else "never used"
        roles = ",".join(u.roles) or "-"
        typer.echo(f"{u.name:<24} {roles:<22} {u.live} live {u.revoked} revoked  created {_when(u.created_at)}  {used}")


@token_app.command("revoke-user")
def token_revoke_user(
    name: Annotated[str, typer.Argument(help="The name its tokens were given to (from `interlink token users`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke every live token of a name (each audited as user.revoke with its token id)."""
    from engine.store.access import Tokens
    from engine.store.users import revoke_user

    store = _store(config)
    revoked = revoke_user(Tokens(store), name)
    if revoked is None:
        _fail("no token was given to this name")
    for token_id in revoked:
        _audit(store, "user.revoke", [], target=token_id)
    typer.echo(f"{len(revoked)} token(s) revoked: {' '.join(revoked)}" if revoked else "no live token to revoke")


# the operator actions (dlq list/replay/discard, reprocess, redeliver, diff) register themselves on the apps above
from engine import cli_actions as _cli_actions  # noqa: E402, F401
from engine import cli_alerts as _cli_alerts  # noqa: E402, F401  (interlink alerts list|ack)
from engine import cli_status as _cli_status  # noqa: E402, F401  (interlink status)


@app.command("reload")
def reload_channels(
    token: Annotated[
        str | None, typer.Option(envvar="INTERLINK_TOKEN", help="An admin API token (default: $INTERLINK_TOKEN).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="The engine's HTTP server (default: http_host and http_port of the settings).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Apply the channel and mapping files in the running engine; an invalid file is refused (file:line), nothing
    changes."""
    import httpx

    if not token:
        _fail("an admin token is needed: --token or INTERLINK_TOKEN (make one: interlink token create --role admin)")
    if url is None:
        url = engine_url(_settings(config))
    try:
        r = httpx.post(f"{url.rstrip('/')}/api/v1/channels/reload", headers={"Authorization": f"Bearer {token}"},
                       timeout=120)  # fmt: skip
    except httpx.HTTPError as exc:
        _fail(f"no engine answers at {url} ({type(exc).__name__}): is `interlink run` running?")
    if r.status_code != 200:
        problem = r.json() if r.headers.get("content-type", "").endswith("json") else {}
        _fail(f"not reloaded ({r.status_code}): {problem.get('detail') or problem.get('title') or r.reason_phrase}")
    done = r.json()
    changed, maps = done["changed"], done.get("mappings", [])
    typer.echo(f"reloaded: {', '.join(changed)}" if changed else "no channel changed")
    if maps:
        typer.echo(f"mapping files reloaded ({len(maps)}): {', '.join(maps)}")
