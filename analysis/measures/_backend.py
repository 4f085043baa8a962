"""Which array library computes a measure: ``backend="numpy" | "torch" | "auto"`` and a device.

The numpy backend is the float64 reference and runs on the CPU only. The torch backend
(``analysis.measures._torch``) computes in float32 with float64 for the reductions that need it
(HSIC sums, nuclear norms, SVDs that decide a rank) on ``device="cpu" | "cuda" | "cuda:N"``; a
measure has it when its class defines ``_prepare_torch`` (see ``Measure.backends``).

``auto`` picks per measure: on a CUDA device, torch wherever a measure has it; on the CPU, the
backend measured faster for that measure on this project's reference machine (``CPU_FASTER``,
from ``python -m bench --only bench_backends``: its rows say which backend won and whether this
table still agrees).

Torch-free: torch is imported only when a torch backend is asked for (``torch_ops``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainables.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

__all__ = ["BACKENDS", "CPU_FASTER", "Backend", "check_backend", "resolve_backend", "torch_ops",
           "is_torch_state", "portable_state", "state_to_device"]

BACKENDS = ("numpy", "torch", "auto")

#: On the CPU, the faster backend per measure (all pairs end to end, M = 20, N = 2,000, D = 256,
#: one thread, float32 inputs; docs/PERFORMANCE.md "Backends"). Measures not listed: numpy.
CPU_FASTER: Mapping[str, str] = {
    "linear_cka": "torch",
    "linear_cka_debiased": "torch",
    "rbf_cka": "numpy",  # 1.2x (3 rounds, load 3) and 1.8x (1 round, load 22) faster, 2026-12-01
    "procrustes_sim": "torch",
    "procrustes_angular": "torch",
    "knn_jaccard": "torch",
    "rank_sim": "torch",
    "joint_rank_jaccard": "torch",
    "second_order_cosine": "torch",
    "svcca": "torch",
    "pwcca": "torch",
    "rtd": "numpy",  # a tie: the barcodes (ripser, CPU) are the work on either backend
}

_TORCH_KEY = "__torch__"  # in a portable state: the keys whose numpy arrays were tensors


@dataclass(frozen=True)
class Backend:
    """A resolved backend: ``name`` is ``numpy`` or ``torch``; ``device`` is ``cpu`` or a CUDA
    device (``cuda`` / ``cuda:N``) for torch, always ``cpu`` for numpy."""

    name: str
    device: str = "cpu"

    def __str__(self) -> str:
        return self.name if self.name == "numpy" else f"{self.name}:{self.device}"


def _check_device(device: Any, backend: str) -> str:
    if device is None:
        return "cpu"
    if device == "auto":  # the trainables' rule: the first CUDA device if there is one
        return "cpu" if backend == "numpy" else str(torch_ops().device("auto"))
    ok = isinstance(device, str) and (device in ("cpu", "cuda") or (
        device.startswith("cuda:") and device[5:].isdigit()))
    if not ok:
        raise ConfigError(f"device={device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    return device


def check_backend(backend: str = "numpy", device: str | None = None, *,
                  here: bool = True) -> str:
    """Validate a backend name and device (before any work starts); returns the device.

    Args:
        backend, device: as for ``resolve_backend``.
        here: also check that this process has the CUDA device (a Ray actor checks its own).

    Raises:
        ConfigError: unknown backend or device, CUDA with numpy, or (``here``) a CUDA device
            this machine does not have.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    device = _check_device(device, backend)
    if backend == "numpy" and device != "cpu":
        raise ConfigError(f"device={device!r} needs backend='torch' or 'auto'; the numpy "
                          "backend runs on the CPU only")
    if here and device != "cpu":
        torch_ops().device(device)
    return device


def resolve_backend(measure: Any, backend: str = "numpy", device: str | None = None, *,
                    fallback: bool = False) -> Backend:
    """The backend that computes ``measure`` for a requested backend and device.

    Args:
        measure: a ``Measure`` (its ``name`` and ``backends`` are read).
        backend: ``numpy``, ``torch`` or ``auto`` (see the module docstring).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto`` (CUDA when there is a GPU);
            CUDA needs the torch backend.
        fallback: a measure without a torch implementation runs on numpy (the engines, which
            run many measures at once, ask for this); otherwise asking for torch is an error.

    Raises:
        ConfigError: unknown backend or device, CUDA with numpy, or torch for a measure that
            has no torch implementation (without ``fallback``).
    """
    device = check_backend(backend, device, here=False)
    has_torch = "torch" in measure.backends
    if backend == "auto":
        on_cuda = device != "cpu"
        pick = "torch" if has_torch and (on_cuda or CPU_FASTER.get(measure.name) == "torch") \
            else "numpy"
        if pick == "numpy" and on_cuda and not fallback:
            raise ConfigError(f"measure {measure.name!r} has no torch backend, so it cannot run "
                              f"on device={device!r}; backends: {list(measure.backends)}")
        return Backend(pick, device if pick == "torch" else "cpu")
    if backend == "numpy":
        return Backend("numpy")
    if not has_torch:
        if fallback:
            return Backend("numpy")
        raise ConfigError(f"measure {measure.name!r} has no torch backend; backends: "
                          f"{list(measure.backends)}")
    return Backend("torch", device)


def torch_ops() -> ModuleType:
    """``analysis.measures._torch`` (imports torch): loaded only when a torch backend runs, so
    ``import analysis.measures`` stays torch-free."""
    from analysis.measures import _torch  # torch: only for the torch backend

    return _torch


def is_torch_state(state: Mapping[str, Any]) -> bool:
    """Whether a prepared state was computed by the torch backend."""
    return state.get("backend") == "torch"


def portable_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state for the object store or a pickle: torch tensors become numpy arrays (CPU), named
    under ``__torch__`` so ``state_to_device`` turns them back. Numpy states pass unchanged."""
    if not is_torch_state(state) or _TORCH_KEY in state:
        return dict(state)
    return torch_ops().to_portable(state, _TORCH_KEY)


def state_to_device(state: Mapping[str, Any], device: str) -> dict[str, Any]:
    """A (portable or live) torch state with its tensors on ``device``; numpy states unchanged."""
    if not is_torch_state(state):
        return dict(state)
    return torch_ops().to_device(state, device, _TORCH_KEY)
