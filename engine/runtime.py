"""The Engine: loads channels and mappings, wires store → queue → pipeline, runs sources and workers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import dramatiq

from engine.alerts.book import AlertBook
from engine.alerts.config import CriticalConfig
from engine.alerts.critical import CriticalResults
from engine.alerts.evaluator import Evaluator
from engine.api.admin import Admin, ChannelState
from engine.api.admin.access import Access
from engine.api.app import create_app
from engine.api.health import Check, Readiness
from engine.api.server import HttpServer
from engine.api.webhooks import WebhookRoutes
from engine.backpressure import Backlog, Bounds, channel_bounds
from engine.channel_watch import fingerprint, watch
from engine.config import yamlfile
from engine.config.channel import Channel, channel_files, load_channels
from engine.destinations import Destination
from engine.errors import ConfigError, HL7Error, ListenError, TransformError
from engine.events_feed import EventFeed
from engine.ingest import GroupCommitter, Ingest
from engine.metrics import Metrics
from engine.pipeline import Pipeline
from engine.queue.actors import DELIVER_QUEUE, PROCESS_QUEUE, Actors
from engine.queue.broker import make_broker
from engine.queue.sweeper import Sweeper
from engine.reload import PartlyApplied, Reloaded, changed_files, mapping_digests, mapping_fingerprint
from engine.settings import Settings
from engine.sources import Source, SourceContext, build_source
from engine.store import Store
from engine.store.access import AuditTrail
from engine.store.retention import Pruner
from engine.transform import MappingSet
from engine.transform.mappingset import load_site_mappings
from engine.transform.pool import InThreadMapper, MapperUnavailable, ProcessMapper

log = logging.getLogger(__name__)


def load_config(settings: Settings, channel_paths: Sequence[Path] | None = None) -> tuple[list[Channel], MappingSet]:
    """Load channels and compile mappings; every error names its file and line."""
    mappings = load_site_mappings(settings)
    paths = list(channel_paths or [settings.channels_dir])
    channels = load_channels(paths)
    check_mappings(channels, mappings, paths)
    return channels, mappings


def check_mappings(channels: Sequence[Channel], mappings: MappingSet, paths: Sequence[Path] = ()) -> None:
    """ConfigError when a channel names a mapping the compiled set does not have (at the ``mapping:`` line of
    its file, when the file is among ``paths``)."""
    missing = {
        c.name: f"channel {c.name}: mapping {c.mapping!r} does not exist"
        for c in channels
        if c.mapping is not None and not _has_mapping(mappings, input_kind(c), c.mapping)
    }
    if not missing:
        return
    problems = []
    for f in channel_files(list(paths)):
        with contextlib.suppress(ConfigError):
            doc = yamlfile.load(f)
            name = doc.data.get("name") if isinstance(doc.data, dict) else None
            if name in missing:
                problems.append(str(doc.error(missing.pop(name), ["mapping"])))
    raise ConfigError("\n".join([*problems, *missing.values()]))


def input_kind(channel: Channel) -> str:
    """The input kind (mapping library) of what a channel receives: a DICOM source's studies are ``dicom``;
    the other sources bring HL7 v2 (a webhook's JSON and FHIR bodies are told apart per message)."""
    return "dicom" if channel.source.type == "dicom" else "hl7v2"


def _has_mapping(mappings: MappingSet, kind: str, mapping: str) -> bool:
    try:
        return mappings.for_kind(kind).has_mapping(mapping)
    except TransformError:  # no maps of that kind at all
        return False


class Engine:
    """One engine process. ``run`` = sources + workers (+ sweeper); ``worker`` = workers only."""

    def __init__(
        self,
        settings: Settings,
        *,
        sources: bool = True,
        workers: bool = True,
        sweeper: bool = True,
        channel_paths: Sequence[Path] | None = None,
    ) -> None:
        self.settings = settings
        self._channel_paths = list(channel_paths or [settings.channels_dir])
        # read before loading: a file changed meanwhile differs at the next reload (or look) and is applied then
        self._mapping_files = mapping_digests(settings)
        self._files_loaded = fingerprint(self._channel_paths) + mapping_fingerprint(self._mapping_files)
        self.channels, self.mappings = load_config(settings, channel_paths)
        self.store = Store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        self._mapping_processes = settings.mapping_process_count() if workers else 0
        mapper = None
        if self._mapping_processes > 0:
            mapper = ProcessMapper(settings, processes=self._mapping_processes)
        self.metrics = Metrics()
        critical = CriticalResults(AlertBook(self.store), self._critical)  # engine/alerts/critical.py
        self.pipeline = Pipeline(
            self.store, self.mappings, self.channels, mapper=mapper, metrics=self.metrics, hooks=[critical]
        )
        self.broker = make_broker(settings.queue_url, namespace=settings.queue_namespace)
        self.actors = Actors(self.broker, self.pipeline)
        self.backlog = Backlog(
            channel_bounds(settings.backlog, self.channels),
            self.store.backlog_by_channel,
            resync_s=settings.backlog.resync_s,
            refused=self.metrics.refused,
        )
        self.metrics.channel_gauge(
            "interlink_channel_backlog", "Messages of a channel received, transformed or held, not finished.",
            self.backlog.counts,
        )  # fmt: skip
        self.metrics.gauge(
            "interlink_backlog", "Messages received or transformed, not yet finished.", self.store.backlog
        )
        self.metrics.gauge(
            "interlink_alerts_active", "Alerts needing attention (engine/alerts/).", AlertBook(self.store).count_active
        )
        for queue_name in (PROCESS_QUEUE, DELIVER_QUEUE):
            self.metrics.gauge(
                f"interlink_queue_{queue_name}_waiting",
                f"Queue entries waiting for the {queue_name} actor.",
                functools.partial(self.actors.waiting, queue_name),
            )
        self._want_sources = sources
        self._want_workers = workers
        self._want_sweeper = sweeper
        self.worker: dramatiq.Worker | None = None
        self.committer: GroupCommitter | None = None
        self.ingest: Ingest | None = None
        #: channels whose source refuses new messages for now ("try later"; see EngineControl)
        self.paused: set[str] = set()
        # one control action at a time (API, CLI, watcher): a start during a reload's restart binds once
        self._control = asyncio.Lock()
        self._ready: Readiness | None = None
        self._routes: WebhookRoutes | None = None
        self.sources: dict[str, Source] = {}
        self._watch: asyncio.Task[None] | None = None
        self.sweeper: Sweeper | None = None
        self.pruner: Pruner | None = None
        self.http: HttpServer | None = None
        self.admin: Admin | None = None
        self.feeds: list[EventFeed] = []
        self.alerts: Evaluator | None = None

    @property
    def in_process_queue(self) -> bool:
        return self.settings.queue_url.startswith("memory://")

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        if self._want_workers:
            self.worker = dramatiq.Worker(self.broker, worker_threads=self.settings.worker_threads, worker_timeout=100)
            self.worker.start()
        if self._want_sweeper:
            self.sweeper = Sweeper(
                self.store,
                self.actors.enqueue_process,
                self.actors.enqueue_deliver,
                waiting=self.actors.waiting,
                interval_s=self.settings.sweeper.interval_s,
                grace_s=self.settings.sweeper.grace_s,
            )
            # An in-process queue died with the previous process: everything unfinished is orphaned now.
            self.sweeper.start(initial_grace_s=0 if self.in_process_queue else None)
            # retention beside the sweeper: one pruner per installation's `run` process (engine/store/retention.py)
            self.pruner = Pruner(self.store, self.settings.retention, lambda: self.channels)
            self.pruner.start()
        if self._want_sources:
            try:  # alert targets read their signing secrets now: a missing one is one line, before any listener
                self.alerts = Evaluator(self.store, self.channels)  # rules, escalation, notices (engine/alerts/)
            except ConfigError:
                await self.stop()
                raise
            self.committer = GroupCommitter(
                self.store,
                self._enqueue_committed,
                batch_max=self.settings.ingest_batch_max,
                batch_wait_ms=self.settings.ingest_batch_wait_ms,
            )
            routes = self._routes = self._http_routes()
            self.backlog.start()
            self.ingest = Ingest(self.committer, self.backlog)
            self.ingest.paused = self.paused
            for ch in self.channels:
                if not ch.enabled:
                    continue
                try:
                    await self._start_source(ch)
                except (ListenError, ConfigError):
                    # Stop what already runs (workers, mapping processes, other channels) so the process
                    # can exit with this one line instead of a traceback.
                    await self.stop()
                    raise
            # the HTTP server carries sources (webhooks) and the listener's probes: `interlink worker`
            # processes, often beside a listener on the same host, do not bind it
            await self._start_http(routes)
            for ch in self.channels:  # event feeds run beside their channel's source (engine/events_feed.py)
                if ch.enabled and ch.events is not None:
                    self.feeds.append(EventFeed(self.store, ch.name, ch.events))
                    self.feeds[-1].start()
            self.alerts.start()
        if self.settings.channels_watch_s > 0:  # `interlink worker` too: its maps and destinations follow the files
            self._watch = asyncio.create_task(
                watch(
                    self._files_now,
                    self.settings.channels_watch_s,
                    self.reload,
                    self._audit_watch,
                    seen=self._files_loaded,
                ),
                name="channel-watch",
            )

    async def _start_source(self, ch: Channel) -> None:
        """Build and start one channel's source; ListenError/ConfigError name the channel."""
        assert self.ingest is not None
        try:
            src = build_source(
                SourceContext(
                    channel=ch,
                    ingest=self.ingest,
                    has_mapping=self._has_mapping,
                    transform_now=self._transform_now,
                    metrics=self.metrics,
                    http=self._routes,
                    limits=self.settings.limits,
                )
            )
            await src.start()
        except (ListenError, ConfigError) as exc:
            raise type(exc)(f"channel {ch.name}: {exc}") from None
        self.sources[ch.name] = src
        log.info("channel %s started (%s source)", ch.name, ch.source.type)

    def _has_mapping(self, message_type: str) -> bool:
        """Whether the maps in force (after the last reload) map this message type."""
        return self.mappings.has_mapping(message_type)

    def _files_now(self) -> str:
        """What the watcher compares: the channel files' and mapping files' bytes."""
        return fingerprint(self._channel_paths) + mapping_fingerprint(mapping_digests(self.settings))

    def _audit_watch(self, reloaded: Reloaded | None, outcome: str) -> None:
        """The watcher's reload (None: refused or failed) in the audit trail, as the API records one."""
        trail = AuditTrail(self.store)
        for action, target, result in (reloaded or Reloaded()).audit(outcome):
            trail.append(token_id="", actor="engine", role="engine", action=action, target=target, peer="watch",
                         outcome=result)  # fmt: skip

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self.admin is not None:
            self.admin.closing.set()  # the dashboards' event streams end now
        if self.http is not None:
            await self.http.stop()  # no new requests; those in progress finish their commits first
            self.http = None
        for src in self.sources.values():
            await src.stop()
        for feed in self.feeds:
            await asyncio.to_thread(feed.stop)
        self.feeds = []
        if self.alerts is not None:
            await asyncio.to_thread(self.alerts.stop)
            self.alerts = None
        if self.committer:
            await asyncio.to_thread(self.committer.close)
        await asyncio.to_thread(self.backlog.stop)
        if self.sweeper:
            self.sweeper.stop()
        if self.pruner:
            await asyncio.to_thread(self.pruner.stop)
        await asyncio.to_thread(self.actors.close)  # the ids held for coalescing go to the queue
        if self.worker:
            await asyncio.to_thread(self.worker.stop)
        self.broker.close()
        self.pipeline.close()
        self.store.close()

    async def serve(self) -> None:
        """Start, then run until SIGINT/SIGTERM. A signal that arrives while the engine starts (Ctrl-C at
        start-up) is taken once it has started, then it stops as usual: no KeyboardInterrupt mid-start."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("stopping")
        await self.stop()

    # -- the HTTP server ----------------------------------------------------------------------------

    def _http_routes(self) -> WebhookRoutes | None:
        """The webhook routes sources register on (None: no HTTP server, ``http_port`` 0)."""
        if not self.settings.http_port:
            return None
        tls = self.settings.http_tls
        return WebhookRoutes(self.settings.data_dir, mtls=tls is not None and tls.ca_file is not None)

    async def _start_http(self, routes: WebhookRoutes | None) -> None:
        """Probes, OpenAPI and the webhook channels on one server (no routes: no server)."""
        if routes is None:
            return
        s = self.settings
        access = Access(self.store)
        self.admin = Admin(self.store, access, s, self)
        self._ready = self._readiness()
        app = create_app(self._ready, routes, self.admin)
        self.http = HttpServer(
            app,
            host=s.http_host,
            port=s.http_port,
            tls=s.http_tls,
            max_connections=s.http_max_connections,
            shutdown_grace_s=s.http_shutdown_grace_s,
        )
        try:
            await self.http.start()
        except (ListenError, ConfigError):
            self.http = None
            await self.stop()
            raise

    def _readiness(self) -> Readiness:
        def store() -> tuple[bool, str]:
            with self.store.work.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True, ""

        def queue() -> tuple[bool, str]:
            self.actors.waiting(PROCESS_QUEUE)
            return True, ""

        def listener(src: Source) -> Check:
            return lambda: (bool(getattr(src, "ready", True)), "")

        def destination(dest: Destination) -> Check:
            def check() -> tuple[bool, str]:
                health = dest.healthcheck()
                return health.ok, health.detail

            return check

        required: dict[str, Check] = {"store": store, "queue": queue}
        required.update({f"channel:{name}": listener(src) for name, src in self.sources.items()})
        informational: dict[str, Check] = {
            f"destination:{c}/{d}": destination(dest) for (c, d), dest in self.pipeline.destinations.items()
        }
        return Readiness(required, informational)

    def _refresh_readiness(self) -> None:
        """The probes follow channel control and reloads: running channels' listeners, current destinations."""
        if self._ready is not None:
            fresh = self._readiness()
            self._ready.required.clear()
            self._ready.required.update(fresh.required)
            self._ready.informational.clear()
            self._ready.informational.update(fresh.informational)

    # -- control (engine.api.admin.EngineControl) -------------------------------------------------------

    def channel_states(self) -> list[ChannelState]:
        paused = self.paused
        return [
            ChannelState(c.name, c.source.type,
                         "stopped" if c.name not in self.sources else "paused" if c.name in paused else "running")
            for c in self.channels
        ]  # fmt: skip

    def _channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)

    async def start_channel(self, name: str) -> None:
        ch = self._channel(name)
        if self.ingest is None:
            raise ConfigError(f"channel {name}: this process runs no sources")
        async with self._control:
            self.paused.discard(name)
            if name not in self.sources:
                await self._start_source(ch)
            self._refresh_readiness()

    async def stop_channel(self, name: str) -> None:
        self._channel(name)
        async with self._control:
            await self._stop_source(name)
            self._refresh_readiness()

    async def _stop_source(self, name: str) -> None:
        src = self.sources.pop(name, None)
        if src is not None:
            await src.stop()
            log.info("channel %s stopped", name)
        self.paused.discard(name)

    async def pause_channel(self, name: str) -> None:
        self._channel(name)
        if name in self.sources:
            self.paused.add(name)
            log.info("channel %s paused", name)

    async def resume_channel(self, name: str) -> None:
        self._channel(name)
        if name in self.paused:
            self.paused.discard(name)
            log.info("channel %s resumed", name)

    async def reload(self) -> Reloaded:
        """Re-read the mapping files and the channel files and apply them. Nothing changes when either is invalid
        (ConfigError naming file:line), or a channel names a map that is no longer there.

        Mappings (only when a file changed): compiled in a thread, then new mapping processes are started with
        them (which compile them too, checking they read the same bytes); then new batches map with the new
        maps, and the old processes finish the batches they hold before they close (``pool.Switch``).
        Channels: changed ones restart their source if it ran (paused ones stay paused), with their new
        destinations and backlog bounds; a removed channel stops, its queued work still goes out. A listener
        that cannot start raises PartlyApplied, a ListenError (its channel stays stopped, the rest is applied)."""
        async with self._control:
            try:
                return await self._reload()
            finally:
                self._refresh_readiness()

    async def _reload(self) -> Reloaded:
        files = await asyncio.to_thread(mapping_digests, self.settings)
        changed_maps = changed_files(self._mapping_files, files)
        mappings = self.mappings
        if changed_maps:
            mappings = await asyncio.to_thread(self._compile, files)
        new = await asyncio.to_thread(load_channels, self._channel_paths)
        check_mappings(new, mappings, self._channel_paths)
        bounds = channel_bounds(self.settings.backlog, new)  # ConfigError before anything changes
        if changed_maps:
            mapper = await asyncio.to_thread(self._new_mapper, mappings, files)
            await asyncio.to_thread(self.pipeline.use_mappings, mappings, mapper)
            self.mappings, self._mapping_files = mappings, files
            log.info("mappings reloaded: %d file(s) changed, %d message maps, %d mapping process(es)",
                     len(changed_maps), len(mappings.programs), self._mapping_processes)  # fmt: skip
        names, failed = await self._apply_channels(new, bounds)
        if isinstance(failed, ListenError):
            raise PartlyApplied(str(failed), Reloaded(names, changed_maps))
        if failed is not None:
            raise failed  # a source refusing its configuration when built (the rest is applied)
        return Reloaded(names, changed_maps)

    def _compile(self, files: dict[str, str]) -> MappingSet:
        """The maps on disk, compiled (blocking: seconds); ConfigError when invalid or changed meanwhile."""
        mappings = load_site_mappings(self.settings)
        if mapping_digests(self.settings) != files:
            raise ConfigError("mapping files changed while they were compiled; nothing applied (reload again)")
        return mappings

    def _new_mapper(self, mappings: MappingSet, files: dict[str, str]) -> InThreadMapper | ProcessMapper:
        """Where the new maps run: new mapping processes (blocking: they compile them) or this process."""
        if not self._mapping_processes:
            return InThreadMapper(mappings)
        try:
            return ProcessMapper(self.settings, processes=self._mapping_processes, files=mapping_fingerprint(files))
        except MapperUnavailable as exc:
            raise ConfigError(f"the new maps were not applied: {exc}") from None

    async def _apply_channels(
        self, new: list[Channel], bounds: dict[str, Bounds]
    ) -> tuple[list[str], ListenError | ConfigError | None]:
        """Apply the channels; the names of those changed or removed, and the first listener that did not start."""
        old = {c.name: c for c in self.channels}
        changed = [c for c in new if old.get(c.name) != c]
        removed = [name for name in old if name not in {c.name for c in new}]
        for name in removed:
            await self._stop_source(name)
        self.channels = [c for c in self.channels if c.name not in removed]
        self.backlog.use(bounds)
        failed: ListenError | ConfigError | None = None
        for ch in changed:
            running, paused = ch.name in self.sources, ch.name in self.paused
            if running:
                await self._stop_source(ch.name)
            self.pipeline.use_channel(ch)
            self.channels = [ch if c.name == ch.name else c for c in self.channels]
            if ch.name not in old:
                self.channels.append(ch)
            if (running or ch.name not in old) and ch.enabled and self.ingest is not None:
                try:
                    await self._start_source(ch)
                except (ListenError, ConfigError) as exc:
                    failed = failed or exc
                    continue
                if paused:
                    self.paused.add(ch.name)
        if self.alerts is not None:
            self.alerts.use(self.channels)
        names = [*(c.name for c in changed), *removed]
        if names:
            log.info("channels reloaded: %s", ", ".join(names))
        return names, failed

    def enqueue_process(self, message_ids: list[str]) -> None:
        self.actors.enqueue_process(message_ids)

    def enqueue_deliver(self, message_id: str, destination: str) -> None:
        self.actors.enqueue_deliver(message_id, destination)

    # -- wiring -----------------------------------------------------------------------------------

    def _critical(self, channel: str) -> CriticalConfig | None:
        """A channel's critical-results settings as configured now (the pipeline's channels follow reloads)."""
        ch = self.pipeline.channels.get(channel)
        return ch.alerts.critical if ch is not None and ch.alerts is not None else None

    def _enqueue_committed(self, ids: list[str]) -> None:
        if ids:
            self.actors.enqueue_process(ids)

    def _transform_now(self, message_id: str) -> None:
        decision = self.pipeline.process(message_id)
        self.actors.apply(decision)
        outcome = decision.processed.get(message_id)
        if outcome is None:
            return
        if isinstance(outcome.error, TransformError):
            raise outcome.error
        if isinstance(outcome.error, HL7Error):
            e = outcome.error
            raise TransformError(e.message, field=e.location, code=e.code)
