"""Human-view requests as jobs: the cloud's ``GetHumanView`` may take seconds (it asks the
camera's edge for the enhancement layer over the camera's stream, the edge may have to encode
it, then the cloud decodes the human image from both layers). The page starts a job and polls
it, so it can show progress, and a second click or a second analyst joins the same job instead
of asking the edge again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import ByteLRU
from .cloud import CloudAPI, CloudError

__all__ = ["HumanJob", "HumanViews"]

log = logging.getLogger("icm.console")


@dataclass
class HumanJob:
    camera_id: str
    frame_id: int
    width: int
    height: int
    base_bytes: int
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    state: str = "pending"            # pending | done | failed
    error: CloudError | None = None
    enhancement_bytes: int = 0
    total_bpp: float = 0.0
    cached: bool = False
    task: asyncio.Task | None = None

    def to_json(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        pixels = max(1, self.width * self.height)
        out: dict[str, Any] = {"camera_id": self.camera_id, "frame_id": self.frame_id,
                               "state": self.state, "elapsed_s": round(end - self.started, 2)}
        if self.state == "done":
            out.update(base_bpp=round(8 * self.base_bytes / pixels, 5),
                       enhancement_bpp=round(8 * self.enhancement_bytes / pixels, 5),
                       total_bpp=round(self.total_bpp, 5),
                       enhancement_bytes=self.enhancement_bytes, cached=self.cached)
        if self.error is not None:
            out["error"] = {"status": self.error.status, "code": self.error.code,
                            "message": self.error.message}
        return out


class HumanViews:
    """At most ``max_pending`` requests to the cloud at once; finished jobs are kept for
    ``keep_s`` (their images stay in ``images`` as long as memory allows)."""

    def __init__(self, cloud: CloudAPI, images: ByteLRU, *, max_pending: int = 8,
                 keep_s: float = 600.0) -> None:
        self.cloud = cloud
        self.images = images
        self.max_pending = max_pending
        self.keep_s = keep_s
        self.jobs: dict[tuple[str, int], HumanJob] = {}

    def get(self, camera_id: str, frame_id: int) -> HumanJob | None:
        return self.jobs.get((camera_id, frame_id))

    def _prune(self) -> None:
        now = time.monotonic()
        for key, job in list(self.jobs.items()):
            if job.finished is not None and now - job.finished > self.keep_s:
                del self.jobs[key]

    def start(self, camera_id: str, frame_id: int, width: int, height: int,
              base_bytes: int) -> HumanJob:
        """The running or finished job of this frame, or a new one (a failed one is retried)."""
        self._prune()
        key = (camera_id, frame_id)
        job = self.jobs.get(key)
        if job is not None and (job.state == "pending" or
                                (job.state == "done" and key in self.images)):
            return job
        if sum(j.state == "pending" for j in self.jobs.values()) >= self.max_pending:
            raise CloudError(429, "busy", "too many human views are being made right now; "
                             "try again in a few seconds")
        job = HumanJob(camera_id, frame_id, width, height, base_bytes)
        job.task = asyncio.create_task(self._run(job))
        self.jobs[key] = job
        return job

    async def _run(self, job: HumanJob) -> None:
        try:
            resp = await self.cloud.human_view(job.camera_id, job.frame_id)
        except CloudError as e:
            job.error = await self._explain(job, e)
            job.state = "failed"
            log.info("human view of %s/%d failed: %s", job.camera_id, job.frame_id, e.code)
        else:
            self.images.put((job.camera_id, job.frame_id), resp.png)
            job.enhancement_bytes, job.total_bpp = resp.enhancement_bytes, resp.total_bpp
            job.cached, job.state = resp.cached, "done"
        finally:
            job.finished = time.monotonic()

    async def _explain(self, job: HumanJob, e: CloudError) -> CloudError:
        """The cloud's codes, in the words an analyst needs (the frame itself exists: the
        console checked before starting the job)."""
        cam, fid = job.camera_id, job.frame_id
        if e.code == "unavailable":
            return CloudError(503, "camera_offline",
                              f"Camera {cam} is offline. Its enhancement layers stay on its "
                              "edge, so the human view of frame "
                              f"{fid} can be made only while the camera is connected.")
        if e.code == "not_found":
            return CloudError(410, "not_retained",
                              f"The edge of camera {cam} no longer keeps frame {fid} (its "
                              "retention window or space has passed), so no human view can "
                              "be made. The machine image stays available.")
        if e.code == "timeout":
            return CloudError(504, "timeout", f"Camera {cam}'s edge did not send the "
                              f"enhancement layer of frame {fid} in time. Try again.")
        if e.code == "not_possible":
            return CloudError(409, "no_codec", "This cloud runs without a codec and cannot "
                              "decode human views.")
        return e

    async def wait(self, job: HumanJob, timeout_s: float) -> None:
        if job.task is not None and not job.task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.task), timeout_s)

    async def close(self) -> None:
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()
