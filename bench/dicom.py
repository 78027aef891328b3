"""DICOM receive benchmark: the engine's storage SCP as shipped beside dcmtk's own ``storescp`` and a bare
pynetdicom SCP, same files, same sender, same run; then the engine's peak memory for a small and a large study.

    python bench/dicom.py [--instances 400] [--template CT_small.dcm] [--sizes 200,2000] [--no-fsync]

Receivers, each on a free port with its own temporary folder:
- the engine: ``interlink run`` in a process of its own (the test harness's engine, its two MLLP channels
  idle; workers on, as shipped) with the DICOM channel ``imaging``: every instance written to the
  content-addressed object store (fsync'd, unless ``--no-fsync``), its header committed to the SQLite store
  (synchronous FULL) before the C-STORE response; studies are assembled and mapped after their
  associations end, to an NDJSON file;
- dcmtk ``storescp --fork -dhl``: each instance written to a file (no fsync), a process per association;
- bare pynetdicom: the library the engine's SCP is built on, in a process of its own, answering Success
  once pynetdicom has written the instance to its temporary file (no store, no commit): the ceiling of a
  pynetdicom SCP on this machine, as the bare echo is for MLLP.

Sender: dcmtk ``storescu`` for all (C++; ``-nh`` no halting), one process per association, 1 and 4
associations; both dcmtk tools run with ``TCP_NODELAY=1`` (see ``DCMTK_ENV``). The files are copies of a
pydicom test file (``--template``) with fresh UIDs, a new study for every run (nothing is a duplicate).
Prints instances/s and MB/s from the first byte to the last response, and the ratios to storescp and to
bare pynetdicom. Then, for each of ``--sizes``, a fresh engine receives one study of that many instances
over 4 associations; the peak resident memory (VmHWM) of the engine is read when the last instance is
acknowledged (the receive path alone: the study's quiet period has not ended), then, with its mapping
process's, once the study has been assembled, mapped and written out (target: not growing with the study).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import EngineProcess, free_port, wait_until  # noqa: E402
from tests.integration.procfs import mapping_processes  # noqa: E402

MB = 1024 * 1024
# Debian's dcmtk leaves Nagle on unless told: each instance's last short PDU then waits for the peer's
# delayed ACK (measured: 50 CT instances, storescu -> storescp over loopback, 4.9 s without, 0.29 s with)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_study(folder: Path, instances: int, template: str, per_series: int = 100) -> list[Path]:
    """``instances`` copies of a pydicom test file as one study with new UIDs, ``per_series`` per series."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file(template))
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), ""
    out = []
    for i in range(instances):
        if i % per_series == 0:
            series = generate_uid()
        ds = base.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SeriesNumber, ds.InstanceNumber = i // per_series + 1, i % per_series + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.IssuerOfPatientID = "BENCH-1", "BENCHHOSP"
        path = folder / f"i{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def storescu(port: int, files: list[Path], associations: int) -> float:
    """Send ``files`` in ``associations`` concurrent storescu processes; seconds until the last one ends."""
    shares = [files[k::associations] for k in range(associations)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-nh", "-aet", "MODALITY", "-aec", "INTERLINK", "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=DCMTK_ENV,
        )
        for share in shares
        if share
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"storescu failed: {b''.join(errors)[-400:].decode(errors='replace')}")
    return elapsed


def bare_pynetdicom(port_q: Any) -> None:
    """A pynetdicom storage SCP that only lets pynetdicom write each instance to its temporary file."""
    import socket

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom import _config as pyn_config

    pyn_config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title="INTERLINK")
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def on_store(event: Any) -> int:
        event.dataset_path  # noqa: B018  (the received file; nothing else is done with it)
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    port_q.put(port)
    server.serve_forever()


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    import socket

    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(up, 180, what)


class EngineRun(EngineProcess):
    """``interlink run`` with the harness's channels and the DICOM channel ``imaging`` (SQLite, memory://
    queue, NDJSON out); the HL7 channels stay idle."""

    def __init__(self, workdir: Path, *, fsync: bool) -> None:
        super().__init__(workdir, imaging={"fsync": fsync, "quiet_period_s": 1})
        self.port = self.dicom_port
        self.out = workdir / "out" / "imaging.ndjson"
        self.start(wait=False)
        assert self.proc is not None
        # compiling every map, in the engine and its mapping processes, takes over 30 s on a loaded box
        wait_port(self.dicom_port, self.proc, f"the engine's DICOM port (log: {workdir / 'engine.log'})")

    def mapped(self, instances: int) -> bool:
        """An ImagingStudy of ``instances`` instances has been written out."""
        if not self.out.exists():
            return False
        for line in self.out.read_text().splitlines():
            for e in json.loads(line)["entry"]:
                r = e["resource"]
                if r["resourceType"] == "ImagingStudy" and r.get("numberOfInstances") == instances:
                    return True
        return False


def peak_rss(pid: int) -> int:
    """The highest resident memory a process has had (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=400, help="instances per throughput run")
    ap.add_argument("--template", default="CT_small.dcm", help="pydicom test file the instances are copied from")
    ap.add_argument("--sizes", default="200,2000", help="study sizes of the peak memory runs")
    ap.add_argument("--no-fsync", action="store_true", help="the engine's object store without fsync")
    ap.add_argument("--memory-only", action="store_true", help="only the peak memory runs")
    args = ap.parse_args()
    if shutil.which("storescp") is None or shutil.which("storescu") is None:
        raise SystemExit("dcmtk (storescp, storescu) is not installed: apt-get install dcmtk")
    fsync = not args.no_fsync
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = os.path.getsize(make_study(work / "probe", 1, args.template)[0])
        print(f"{args.template} copies, {size / 1024:.1f} KB each, {args.instances} instances per run, sender dcmtk "
              f"storescu; engine: interlink run, object store fsync {fsync}, SQLite FULL\n")  # fmt: skip
        if not args.memory_only:
            throughput(work, args.instances, args.template, fsync)
        memory(work, [int(n) for n in args.sizes.split(",")], args.template, fsync)


def throughput(work: Path, instances: int, template: str, fsync: bool) -> None:
    """Instances/s and MB/s of each receiver, 1 and 4 associations, the same storescu sending."""
    import multiprocessing as mp

    print(f"{'receiver':<24}{'assocs':>7}{'inst/s':>9}{'MB/s':>8}{'vs storescp':>13}{'vs pynetdicom':>15}")
    engine = EngineRun(work / "engine", fsync=fsync)
    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    bare = ctx.Process(target=bare_pynetdicom, args=(port_q,), daemon=True)
    bare.start()
    bare_port = port_q.get(timeout=120)
    (work / "storescp").mkdir()
    scp_port = free_port()
    scp = subprocess.Popen(
        ["storescp", "--fork", "-dhl", "-aet", "INTERLINK", "-od", str(work / "storescp"), str(scp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    try:
        wait_port(scp_port, scp, "storescp")
        receivers = (("dcmtk storescp", scp_port), ("bare pynetdicom", bare_port),
                     ("engine (interlink run)", engine.port))  # fmt: skip
        for _, port in receivers:  # warm-up: a few instances to each
            storescu(port, make_study(work / f"warm-{port}", 10, template), 1)
        for assocs in (1, 4):
            rates: dict[str, float] = {}
            for name, port in receivers:
                files = make_study(work / f"run-{assocs}-{port}", instances, template)
                elapsed = storescu(port, files, assocs)
                rates[name] = len(files) / elapsed
                mbs = sum(f.stat().st_size for f in files) / MB / elapsed
                vs_scp = rates[name] / rates["dcmtk storescp"]
                vs_bare = f"{rates[name] / rates['bare pynetdicom']:.2f}" if "bare pynetdicom" in rates else ""
                print(f"{name:<24}{assocs:>7}{rates[name]:>9.0f}{mbs:>8.1f}{vs_scp:>13.2f}{vs_bare:>15}")
                shutil.rmtree(files[0].parent)
    finally:
        scp.terminate()
        scp.wait()
        bare.kill()
        bare.join()
        engine.stop()


def memory(work: Path, sizes: list[int], template: str, fsync: bool) -> None:
    """Peak RSS of a fresh engine per study size: at the last acknowledgement, and once mapped."""
    print("\npeak resident memory (VmHWM), a fresh engine per study: when the last instance is acknowledged;")
    print("then the engine and its mapping process once the study is assembled, mapped and written out")
    print(f"{'instances':>10}{'received MB':>13}{'engine MB':>11}{'mapping MB':>12}{'receive s':>11}"
          f"{'mapped after s':>16}")  # fmt: skip
    for n in sizes:
        files = make_study(work / f"study-{n}", n, template)
        run = EngineRun(work / f"rss-{n}", fsync=fsync)
        try:
            t0 = time.perf_counter()
            received = storescu(run.port, files, 4)
            assert run.proc is not None
            at_receipt = peak_rss(run.proc.pid) / MB  # before the quiet period ends: the receive path alone
            wait_until(lambda n=n, run=run: run.mapped(n), 600, f"the {n}-instance study mapped", interval_s=0.5)
            done = time.perf_counter() - t0
            engine_mb = peak_rss(run.proc.pid) / MB
            mapping_mb = max((peak_rss(c) for c in mapping_processes(run.proc.pid)), default=0) / MB
            print(f"{n:>10}{at_receipt:>13.0f}{engine_mb:>11.0f}{mapping_mb:>12.0f}{received:>11.1f}{done:>16.1f}")
        finally:
            run.stop()
        shutil.rmtree(work / f"study-{n}")


if __name__ == "__main__":
    main()
