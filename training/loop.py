"""The one training loop: every recipe (Echolancer, pre-encoder, vocoder) runs it.

A recipe is a subclass of :class:`Recipe`. It supplies what is its own: ``build`` (data, model,
optimizers), ``batches`` (one epoch's step inputs), ``train_step``, ``validate``, its checkpoint
state (``checkpoint_state`` / ``load_state_dict``) and ``export``; a few optional hooks (logging a
window of steps, reporting a validation, work after a step) have defaults. The loop owns what must
mean the same for all of them: output-directory safety, seeding, resume, saving (checkpoint writing
and rotation through :class:`utils.checkpoint.CheckpointManager`), stop signals (SIGINT/SIGTERM save
and end the run with status ``interrupted``), the non-finite policy, the time budget
(``training.max_minutes``), the log / validate / save cadence, early stopping and the run's status.
The contracts are written down in ``docs/DESIGN.md`` ("Training engine").
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm import tqdm

from training.engine import seed_everything
from training.nonfinite import NonFinitePolicy
from training.resume import prepare_output_dir
from training.signals import StopSignals
from utils.checkpoint import CheckpointManager, load_checkpoint
from utils.early_stopping import EarlyStopping
from utils.logger import Logger

log = logging.getLogger("echolancer.train")

# Statuses after which the run saves its last state and exports (the others stop short of that).
ENDS_NORMALLY = ("finished", "early_stopped", "time_budget")
_EXHAUSTED = object()  # the end of an epoch's batches


@dataclass
class Cadence:
    """When the loop logs, validates, saves and checks, and where it stops.

    Args:
        log_step, val_step, save_step: every that many steps.
        max_steps, max_epochs: the run ends when either is reached (``math.inf``: no limit).
        check_step: how often a multi-process run agrees on a stop request, and how often the time
            budget and a recipe's late non-finite flags are looked at.
        max_minutes: the time budget (None: none); reaching it ends the run as if it had finished.
        at_the_last_step: validate and save at ``max_steps`` too, whatever the cadence.
        validate_each_epoch: validate at every epoch end as well (unless that step just did).
    """

    log_step: int
    val_step: int
    save_step: int
    max_steps: float = math.inf
    max_epochs: float = math.inf
    check_step: int = 1
    max_minutes: Optional[float] = None
    at_the_last_step: bool = False
    validate_each_epoch: bool = False


@dataclass
class Validation:
    """One validation's outcome.

    Args:
        loss: the number that decides the best checkpoint (and early stopping, when the recipe has it).
        metrics: what the recipe logs of it.
        counts: False leaves it out of early stopping (the recipe knows it says little of the model).
        details: anything else the recipe's report needs (pictures, audio).
    """

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    counts: bool = True
    details: Any = None


@dataclass
class RunPlace:
    """Where a run writes and how it starts.

    Args:
        output_dir: ``ckpt/``, ``export/``, the W&B run and the logs go here.
        resume: a checkpoint file or ``ckpt/`` directory to continue from (None: a fresh run).
        overwrite: a fresh run may replace another run's checkpoints (moved aside, not deleted).
        export: write the export when the run ends normally.
        is_main: this process writes checkpoints and logs (rank 0 of a multi-process run).
        init_from: trained weights a new run starts from (such a run cannot resume).
    """

    output_dir: str
    resume: Optional[str] = None
    overwrite: bool = False
    export: bool = True
    is_main: bool = True
    init_from: Optional[str] = None


class Recipe(ABC):
    """One model's training, run by the shared loop (:meth:`start`, then :meth:`run`).

    Subclasses set ``seed``, ``keep_last``, ``wandb`` (the config's W&B section), ``cadence`` and
    ``nonfinite`` in :meth:`build` (or before), and call :meth:`start` at the end of ``__init__``.
    """

    name = "train"  # the progress bar's label
    bar_unit = "it"
    map_location: Any = "cpu"  # where a resumed checkpoint's tensors are loaded
    # Counters every recipe has; class defaults so a recipe may keep them elsewhere (properties).
    step: int = 0
    epoch: int = 0

    seed: int
    keep_last: int
    wandb: Any
    cadence: Cadence
    nonfinite: NonFinitePolicy

    def __init__(self, place: RunPlace) -> None:
        self.place = place
        self.output_dir = place.output_dir
        self.ckpt_dir = os.path.join(place.output_dir, "ckpt")
        self.is_main = place.is_main
        self.ckpt: Optional[CheckpointManager] = None
        self.logger: Optional[Logger] = None
        self.early_stopping: Optional[EarlyStopping] = None
        self.stop_requested = False
        self.saved_step = -1  # the step of the newest save, so a step is never saved twice
        self.last_checkpoint: Optional[str] = None
        self.wandb_run_id: Optional[str] = None
        self.export_dir: Optional[str] = None
        self.boundary_rng: Optional[dict] = None  # RNG states at the start of the step in progress
        self.started = 0.0  # set when run() starts (training.max_minutes)

    # ---- what a recipe supplies ------------------------------------------------------------------

    @abstractmethod
    def build(self) -> None:
        """Data, model, optimizers and schedules (seeded already); sets ``cadence`` and ``nonfinite``."""

    @abstractmethod
    def batches(self) -> Iterable[Any]:
        """The rest of the current epoch's step inputs; exhausted at the epoch's end."""

    @abstractmethod
    def train_step(self, batch: Any) -> Any:
        """One optimizer step; returns its metrics, or None when a stop request cut it short (nothing applied)."""

    @abstractmethod
    def validate(self) -> Optional[Validation]:
        """Measure the model on held-out data (None: nothing to validate on)."""

    @abstractmethod
    def checkpoint_state(self, rng: Optional[dict] = None) -> Optional[dict]:
        """What a checkpoint holds (None on processes that do not write).

        Args:
            rng: RNG states to save in place of the current ones (a step cut short saves its start's).
        """

    @abstractmethod
    def load_state_dict(self, state: dict, source: str) -> None:
        """Continue from a checkpoint: refuse incompatible settings, restore weights, optimizers and counters."""

    @abstractmethod
    def export(self) -> Optional[str]:
        """The run ended normally: put the weights to export in place (e.g. the best) and write the
        export when the run was asked to; returns where it went (None: nothing written)."""

    @abstractmethod
    def wandb_config(self) -> dict:
        """The config the W&B run records."""

    # ---- optional hooks --------------------------------------------------------------------------

    def ready(self) -> None:
        """After resume and the logger: the last of the start-up."""
        return None

    def begin(self) -> None:
        """Just before the first step of :meth:`run`."""
        return None

    def record(self, metrics: Any) -> None:
        """A finished step's metrics (kept for the next :meth:`log_train`)."""
        return None

    def log_train(self) -> Optional[dict[str, str]]:
        """A log step: log the steps since the last one; returns the progress bar's postfix."""
        return None

    def report_validation(self, val: Validation) -> None:
        """Log a validation (early stopping has already seen it)."""
        return None

    def after_step(self) -> None:
        """After the step's logging, validation and save (e.g. a periodic test)."""
        return None

    def end_epoch(self) -> None:
        """The epoch's batches are exhausted: move on to the next epoch."""
        self.epoch += 1

    def resolve_nonfinite(self) -> None:
        """Tell ``nonfinite`` of steps whose finiteness the recipe learns late (read from a device)."""
        return None

    def checkpoint_artifact(self, val_loss: Optional[float]) -> Optional[dict]:
        """``Logger.log_artifact`` arguments for a new checkpoint (with ``wandb.log_checkpoints``), or None."""
        return None

    def resume_detail(self) -> str:
        """Said after "resumed from ... at step N"."""
        return ""

    def planned_steps(self) -> Optional[float]:
        """The progress bar's total."""
        return self.cadence.max_steps

    @property
    def distributed(self) -> bool:
        """Several processes train together (stop and time decisions must be agreed)."""
        return False

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (a collective when distributed)."""
        return flag

    def close(self, status: str) -> None:
        """The run is over (also after an exception): flush what it logged."""
        if self.logger is not None:
            self.logger.finish()

    # ---- start-up: output directory, seed, build, resume, logger ---------------------------------

    def start(self) -> None:
        """Build the run, in the order every recipe follows (docs/DESIGN.md, "Adding a recipe")."""
        p = self.place
        prepare_output_dir(p.output_dir, p.resume, p.overwrite, p.is_main, p.init_from)
        seed_everything(self.seed)
        self.build()
        if p.is_main:
            self.ckpt = CheckpointManager(self.ckpt_dir, self.keep_last, adopt_existing=p.resume is not None)
        run_id = self._resume(p.resume) if p.resume is not None else None
        w = self.wandb
        self.logger = Logger(p.output_dir, project=w.project, mode=w.mode, run_name=w.run_name, entity=w.entity,
                             enabled=p.is_main, config=self.wandb_config(), run_id=run_id)
        self.wandb_run_id = self.logger.run_id or run_id
        self.ready()

    def _resume(self, where: str) -> Optional[str]:
        """Load ``where`` into the recipe; returns the W&B run id it recorded."""
        state = load_checkpoint(where, map_location=self.map_location)
        self.load_state_dict(state, where)
        self.saved_step = self.step
        log.info("resumed from %s at step %d%s", where, self.step, self.resume_detail())
        return state.get("wandb_run_id")

    def request_stop(self) -> None:
        """Ask the loop to save and stop at the next safe point (signal handlers call this)."""
        self.stop_requested = True

    # ---- saving ----------------------------------------------------------------------------------

    def save(self, val_loss: Optional[float] = None, rng: Optional[dict] = None) -> Optional[str]:
        """Write a checkpoint of the current step (every process calls: a recipe may gather from all).

        Args:
            val_loss: this step's validation loss, for the best checkpoint (None: not a candidate).
            rng: RNG states to save in place of the current ones.
        Returns:
            the file written, or None on a process that does not write.
        """
        state = self.checkpoint_state(rng)
        self.saved_step = self.step
        if state is None:
            return None
        state["wandb_run_id"] = self.wandb_run_id
        path = self.ckpt.save(state, self.step, val_loss)
        self.last_checkpoint = path
        artifact = self.checkpoint_artifact(val_loss) if self.wandb.log_checkpoints else None
        if artifact is not None:
            self.logger.log_artifact(path, **artifact)
        log.info("saved %s", path)
        return path

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> str:
        """Train until a limit, a stop or a failure; returns the status ("finished", "early_stopped",
        "time_budget", "interrupted" or "nonfinite"). A normal end saves the last state and exports."""
        status = "finished"
        self._bar = tqdm(total=self.planned_steps(), initial=self.step, disable=not self.is_main,
                         dynamic_ncols=True, desc=self.name, unit=self.bar_unit)
        self.started = time.perf_counter()  # for training.max_minutes
        try:
            with StopSignals(self.request_stop):
                self.begin()
                status = self._epochs()
                if status in ENDS_NORMALLY:
                    self._end(status)
        finally:
            self._bar.close()
            self.close(status)
        return status

    def _epochs(self) -> str:
        c = self.cadence
        while self.epoch < c.max_epochs and self.step < c.max_steps:
            status = self._epoch()
            if status is not None:
                return status
            self.end_epoch()
            if c.validate_each_epoch and self.step % c.val_step != 0:
                status, _ = self._validate()
                if status is not None:
                    return status
        return "finished"

    def _epoch(self) -> Optional[str]:
        """Steps through the rest of the current epoch: None once it is exhausted, else the run's status."""
        batches = iter(self.batches())
        while self.step < self.cadence.max_steps:
            batch = next(batches, _EXHAUSTED)
            if batch is _EXHAUSTED:
                return None
            metrics = self.train_step(batch)
            if metrics is None or self._stop_now():
                # A step cut short applied nothing: its start's state is what a resumed run redoes.
                self.save(rng=self.boundary_rng if metrics is None else None)
                return "interrupted"
            self.record(metrics)
            self._bar.update(1)
            status = self._periodic()
            if status is None and self._time_is_up():
                status = "time_budget"
            if status is not None:
                return status
        return "finished"

    def _periodic(self) -> Optional[str]:
        """The non-finite policy, logging, validation, saving and the recipe's own work after a step;
        returns a status when the run must end here."""
        c, step = self.cadence, self.step
        last = step >= c.max_steps
        if step % c.check_step == 0 or step % c.log_step == 0 or last:
            self.resolve_nonfinite()
        if self.nonfinite.should_stop:
            self.save()
            log.error("%s; last good state saved to %s", self.nonfinite.message(step), self.last_checkpoint)
            return "nonfinite"
        if step % c.log_step == 0:
            postfix = self.log_train()
            if postfix:
                self._bar.set_postfix(**postfix)
        val_loss = None
        if step % c.val_step == 0 or (last and c.at_the_last_step):
            status, val_loss = self._validate()
            if status is not None:
                return status
        if (step % c.save_step == 0 or (last and c.at_the_last_step)) and self.saved_step != step:
            # With early stopping, the best checkpoint was saved when it improved (one notion of best).
            self.save(val_loss if self.early_stopping is None else None)
        self.after_step()
        return None

    def _validate(self) -> tuple[Optional[str], Optional[float]]:
        """Validate, feed early stopping, save a new best; returns (status, validation loss)."""
        val = self.validate()
        if val is None:
            return None, None
        es = self.early_stopping
        improved = es.step(val.loss, self.step) if es is not None and val.counts else False
        self.report_validation(val)
        if improved:
            self.save(val_loss=val.loss)
        if es is not None and es.should_stop:
            return "early_stopped", val.loss
        return None, val.loss

    def _stop_now(self) -> bool:
        """Whether a stop was requested. One process: the flag, every step (free). Several: the flag
        agreed every ``check_step`` steps; every rank reaches the same steps, so all stop together."""
        if not self.distributed:
            return self.stop_requested
        if self.step % self.cadence.check_step != 0:
            return False
        return self.any_rank(self.stop_requested)

    def _time_is_up(self) -> bool:
        """Whether ``max_minutes`` of this run have passed, checked every ``check_step`` steps (all
        processes together: the main process's clock decides)."""
        c = self.cadence
        if c.max_minutes is None or self.step % c.check_step != 0:
            return False
        up = time.perf_counter() - self.started >= c.max_minutes * 60
        return self.any_rank(up and self.is_main) if self.distributed else up

    def _end(self, status: str) -> None:
        """A normal end: save the last state (once), say why it ended, export."""
        if self.saved_step != self.step:
            self.save()
        if status == "early_stopped":
            log.info("early stopping at step %d: no improvement for %d validations", self.step,
                     self.early_stopping.patience)
        if status == "time_budget":
            log.info("training.max_minutes (%g) reached at step %d", self.cadence.max_minutes, self.step)
        self.export_dir = self.export()
