"""A training step's metrics kept on the device, and the window of steps a log line averages.

Reading a device value to the host waits for the GPU; the Echolancer recipe keeps its step metrics
on the device and reads them once per log line (docs/DESIGN.md, "Host syncs").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch


class StepMetrics(Mapping):
    """One step's metrics, kept where they were computed.

    ``device``: a float64 tensor on the training device, one value per name in ``device_keys``
    (nothing is read to the host while training runs); ``host``: plain floats. Reading a key
    (``m["train/loss"]``) reads the device values to the host: one sync, for tests and callers that
    want numbers now. :class:`MetricWindow` adds them up on the device instead.
    """

    def __init__(self, device_keys: tuple[str, ...], device: torch.Tensor, host: dict[str, float]) -> None:
        self.device_keys, self.device, self.host = device_keys, device, host
        self._read: Optional[dict[str, float]] = None

    def _all(self) -> dict[str, float]:
        if self._read is None:
            self._read = {**dict(zip(self.device_keys, self.device.tolist())), **self.host}
        return self._read

    def __getitem__(self, key: str) -> float:
        return self._all()[key]

    def __iter__(self):
        return iter((*self.device_keys, *self.host))

    def __len__(self) -> int:
        return len(self.device_keys) + len(self.host)


class MetricWindow:
    """The steps since the last log line: device values summed on the device, host values kept.

    :meth:`mean` reads the device sums once (one host sync per log line) and gives what averaging
    the steps' floats one by one gave: the device sums are float64 and added in step order, as
    Python's ``sum`` of floats does, so the logged numbers are the same bits. ``last_keys`` take the
    window's last value instead of its mean.
    """

    def __init__(self, last_keys: tuple[str, ...] = ()) -> None:
        self.last_keys = last_keys
        self.clear()

    def clear(self) -> None:
        self.n = 0
        self._sum: Optional[torch.Tensor] = None
        self._keys: tuple[str, ...] = ()
        self._host: list[dict[str, float]] = []

    def __len__(self) -> int:
        return self.n

    def add(self, m: StepMetrics) -> None:
        self._sum = m.device.clone() if self._sum is None else self._sum.add_(m.device)
        self._keys = m.device_keys
        self._host.append(m.host)
        self.n += 1

    def mean(self) -> dict[str, float]:
        if not self.n:
            return {}
        out = {k: v / self.n for k, v in zip(self._keys, self._sum.tolist())}  # the one read
        for k in self._host[0]:
            out[k] = self._host[-1][k] if k in self.last_keys else sum(h[k] for h in self._host) / self.n
        for k in self.last_keys:
            if k in out and k not in self._host[0]:
                raise KeyError(f"{k}: a last-value key must be a host value")
        return out

