"""Probes: ``GET /healthz`` (the process answers) and ``GET /readyz`` (it can take and keep messages).

Readiness is the store (a query answers), the queue (its depth can be read) and every listener (started
and still serving); each check runs in a thread with a deadline, so a hung database makes the probe say
"not ready" instead of hanging it. Destinations are reported (their ``healthcheck()``) but do not decide
readiness: while an EHR is down the engine still accepts, stores and queues. Answers carry names and
short reasons only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["Check", "Readiness", "routes"]

#: a check: True when fine, or False with a short PHI-free reason
Check = Callable[[], "tuple[bool, str]"]


@dataclass
class Readiness:
    """What ``/readyz`` checks (``required``) and reports (``informational``)."""

    required: dict[str, Check] = field(default_factory=dict)
    informational: dict[str, Check] = field(default_factory=dict)
    timeout_s: float = 2.0

    async def run(self) -> tuple[bool, dict[str, dict[str, object]]]:
        names = [*self.required, *self.informational]
        checks = [*self.required.values(), *self.informational.values()]
        results = await asyncio.gather(*(self._one(c) for c in checks))
        report: dict[str, dict[str, object]] = {}
        for name, (ok, detail) in zip(names, results, strict=True):
            report[name] = {"ok": ok, **({"detail": detail} if detail else {}),
                            "required": name in self.required}  # fmt: skip
        ready = all(ok for name, (ok, _) in zip(names, results, strict=True) if name in self.required)
        return ready, report

    async def _one(self, check: Check) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(check), self.timeout_s)
        except TimeoutError:
            return False, f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # a check that fails is a "not ready", never a 500
            return False, type(exc).__name__


def routes(readiness: Readiness) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, report = await readiness.run()
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": report},
                            status_code=200 if ready else 503)  # fmt: skip

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
