"""`EditorJobs`: the background jobs of `DragEditor` (Prepare, Step, Run, Stop, Reset) and their progress.

A mixin of `DragEditor` (it uses the editor's session, buttons, bars and status line). A job runs in a worker
thread, so the notebook stays usable; before it starts, `editor_parts.preflight` checks that it can do
anything (a drag, an image, valid settings), so a refused Run spends nothing.
"""
from __future__ import annotations

import threading
import time
import traceback

from . import editor_parts as parts


class EditorJobs:
    """Prepare / Step / Run / Stop / Reset of a `DragEditor` (see the module docstring)."""

    # ------------------------------------------------------------------ actions
    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background job (Prepare/Step/Run) ends; True when none is left running."""
        if self._worker is not None:
            self._worker.join(timeout)
        return not self.busy

    def prepare(self) -> None:
        """Button Prepare: LoRA + inversion + source features in the background."""
        self._start("prepare", self._prepare_job)

    def step(self) -> None:
        """Button Step: one drag step in the background, then the result."""
        self._start("step", self._step_job)

    def run(self) -> None:
        """Button Run: drag steps in the background until reached / drag steps / Stop."""
        self._start("run", self._run_job)

    def stop(self) -> None:
        """Button Stop: the running job ends before its next step; Run resumes."""
        if self.busy:
            self._stop_requested = True
            self.session.stop()
            self.say("stopping after the current step…")

    def reset(self) -> None:
        """Button Reset: back to the inverted latent and the drags' handles."""
        if self.busy:
            return self.say("busy: press Stop first", error=True)
        try:
            self.session.reset()            # its "reset" event updates the result view and progress
        except (ValueError, TypeError) as e:
            return self.say(str(e), error=True)
        self.say("reset: back to the start; Run starts over")

    # --- background jobs
    def _start(self, name, job) -> None:
        if self.busy:
            return self.say("busy: wait for the current job or press Stop", error=True)
        why = parts.preflight(self.session, name, self.canvas.pending)
        if why is not None:                      # refused before anything is spent
            return self.say(why, error=True)
        self._stop_requested = False
        self._set_busy(True, name)
        self._worker = threading.Thread(target=self._job, args=(name, job), name=f"dragnb-{name}", daemon=True)
        self._worker.start()

    def _job(self, name, job):
        try:
            job()
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
        except Exception as e:                       # not the user's fault: keep the traceback out of the way
            self.last_error = e
            self.say(f"{name} failed: {type(e).__name__}: {e} (traceback under the settings)", error=True)
            with self.details:
                traceback.print_exc()
        finally:
            self._set_busy(False, name)

    def _set_busy(self, busy: bool, name: str) -> None:
        for key in ("prepare", "step", "run", "reset", "undo", "redo", "clear_points", "clear_mask"):
            self.buttons[key].disabled = busy       # no edits under a running job (Stop first)
        self.buttons["stop"].disabled = not (busy and name in ("run", "step"))
        for wdg in [*self.settings.values(), self.method]:
            wdg.disabled = busy
        self.canvas.interactive = not busy
        if busy:
            self.say(f"{name}…")

    def _on_prepare_progress(self, stage, i, n):
        if stage == "lora":
            self.lora_progress.max = max(1, n)
            self.lora_progress.value = min(i, n)
        if stage == "lora" and i not in (0, n) and i % max(1, n // 20):
            return                                   # coarse: about 20 status updates per stage
        self.say(f"preparing: {stage} {i}/{n}")

    def _prepare_if_needed(self, always: bool = False):
        if always or not self.session.is_prepared:
            self.session.prepare(progress=False, callback=self._on_prepare_progress)
            self.lora_progress.value = self.lora_progress.max

    def _prepare_job(self):
        t0 = time.perf_counter()
        self._prepare_if_needed(always=True)
        self.say(f"prepared in {time.perf_counter() - t0:.1f} s: add drags and press Run")

    def _step_job(self):
        self._prepare_if_needed()
        records = self.session.step(1)
        self._finish(records, "step")

    def _run_job(self):
        self._prepare_if_needed()
        if self._stop_requested:
            return self.say("stopped before the first step")
        self._last_preview = time.perf_counter()
        self.drag_progress.max = max(1, self.session.config.drag_steps)
        records = self.session.run(callback=self._on_record, progress=False)
        self._finish(records, "run")

    def _on_record(self, record) -> bool:
        """Per-step callback of session.run (worker thread): progress, and now and then a preview."""
        if self._stop_requested:                     # Stop pressed before run() started listening
            return False
        self.drag_progress.value = min(record.step, self.drag_progress.max)
        self._known_steps = self.session.n_steps
        self.say(parts.step_text(self.session, record))
        now = time.perf_counter()
        if now - self._last_preview >= self.preview_every_s:
            self._show_image(self.session.preview(),
                             f"(rough preview at step {record.step}: a one-step estimate, not the result; "
                             "the full result comes when the run ends)", record.handles)
            self._last_preview = time.perf_counter()
        else:
            self._show_handles(record.handles)
        return True

    def _finish(self, records, name):
        s = self.session
        self.drag_progress.value = min(s.n_steps, self.drag_progress.max)
        self._known_steps = s.n_steps
        self._show_image(s.result(), f"after {s.n_steps} steps")
        self.say(parts.finish_text(s, name, records, self._stop_requested))
