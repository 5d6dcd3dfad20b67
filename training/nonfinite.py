"""The non-finite policy of every trainer, and an optimizer update that keeps it without a host sync.

A step whose loss or gradient is not finite applies no update but still counts as a step (the step
counter and the learning-rate schedule advance: it consumed its data); after ``limit`` such steps in
a row the run saves its last good state and stops (the loop, ``training/loop.py``).
"""

from __future__ import annotations

import torch


class NonFinitePolicy:
    """One policy for every trainer.

    A step whose loss or gradient is not finite applies no update, but still counts as a step
    (the step counter and the learning-rate schedule advance: it consumed its data). After
    ``limit`` such steps in a row the run saves its last good state and stops with exit status 1.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.total = 0
        # Latched when the streak reaches the limit: a recipe that learns of its steps' finiteness
        # late (flags kept on the device, read every few steps) still stops when a later finite step
        # reset the streak in the meantime.
        self.tripped = False

    def record(self, finite: bool) -> None:
        if finite:
            self.streak = 0
        else:
            self.streak += 1
            self.total += 1
            self.tripped = self.tripped or self.streak >= self.limit

    @property
    def should_stop(self) -> bool:
        return self.tripped or self.streak >= self.limit

    def message(self, step: int, key: str = "training.max_nonfinite_steps") -> str:
        n = max(self.streak, self.limit) if self.tripped else self.streak
        return (f"stopping at step {step}: {n} steps in a row had a non-finite loss or gradient "
                f"({key} = {self.limit}); lower the learning rate, clip gradients or use fp32")


class GuardedUpdate:
    """An optimizer update that applies nothing when the step's loss or gradient is not finite.

    With a fused optimizer (``on_device``) the finiteness flags are its ``found_inf`` input: a bad step
    changes no weight, no moment and no step count, decided on the device, and ``policy`` learns of
    the steps at :meth:`resolve` (the loop calls it at log and check steps and before a save).
    Otherwise :meth:`apply` reads the two flags (one host read) and records the step at once.

    Args:
        optimizer: the step's optimizer.
        scaler: its GradScaler (enabled for fp16 only).
        policy: the run's non-finite policy.
        on_device: the optimizer is fused and takes the flags as ``found_inf``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, policy: NonFinitePolicy,
                 on_device: bool) -> None:
        self.optimizer, self.scaler, self.policy, self.on_device = optimizer, scaler, policy, on_device
        self._pending: list[torch.Tensor] = []

    def apply(self, flags: torch.Tensor, skipped: torch.Tensor) -> None:
        """Step the optimizer unless the step is non-finite.

        Args:
            flags: (loss non-finite, gradient non-finite) as floats, on the device (any rank's).
            skipped: their maximum.
        """
        opt, scaler = self.optimizer, self.scaler
        if self.on_device:
            opt.grad_scale, opt.found_inf = None, skipped
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
            if scaler.is_enabled():
                scaler.update()  # unscale_ recorded the overflow: the scale halves on one
            self._pending.append(flags)
            return
        loss_bad, grad_bad = (f > 0 for f in flags.tolist())  # the one read of this step
        self.record(loss_bad, grad_bad)
        if loss_bad or grad_bad:
            if scaler.is_enabled():
                scaler.update()
        else:
            scaler.step(opt)
            scaler.update()

    def record(self, loss_bad: bool, grad_bad: bool) -> None:
        """One step's finiteness, for the policy."""
        if loss_bad or grad_bad:
            # With fp16 an overflowing gradient is the scaler's normal calibration (it halves the
            # scale and skips); only a non-finite loss counts towards stopping the run then.
            if loss_bad or not self.scaler.is_enabled():
                self.policy.record(False)
            else:
                self.policy.total += 1
        else:
            self.policy.record(True)

    def resolve(self) -> None:
        """Feed the steps' device-side flags to the policy, in step order (one read)."""
        if self._pending:
            flags, self._pending = torch.stack(self._pending).tolist(), []
            for loss_bad, grad_bad in flags:
                self.record(loss_bad > 0, grad_bad > 0)
