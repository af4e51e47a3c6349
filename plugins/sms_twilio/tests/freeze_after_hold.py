"""``python freeze_after_hold.py serve …``: ``extmsg`` whose process stops itself (SIGSTOP)
right after its first hold of a job of each kind named in ``EXTMSG_TEST_FREEZE_KINDS``
(comma-separated) — the job is held, its send not yet written. A test lets another instance
take the job over meanwhile, then wakes this one with SIGCONT."""

from __future__ import annotations

import os
import signal

from extmsg.cli import main
from extmsg.engine.engine import Engine
from extmsg.store.base import Job

_kinds = {kind for kind in os.environ.get("EXTMSG_TEST_FREEZE_KINDS", "").split(",") if kind}
_hold = Engine.hold


async def _hold_then_freeze(self: Engine, job: Job) -> None:
    await _hold(self, job)
    if job.kind in _kinds:
        _kinds.discard(job.kind)
        os.kill(os.getpid(), signal.SIGSTOP)


Engine.hold = _hold_then_freeze  # type: ignore[method-assign]
main(prog_name="extmsg")
