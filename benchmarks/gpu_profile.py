"""The summary of a `torch.profiler` run over a few training steps: where the wall time goes, for
`gpu_speed.py --profile` (our loop against the model-only loop, to explain the gap between them).

The GPU is busy for the summed self time of the device events (kernels, memory copies: the profiler's own
"Self CUDA time total"); the rest of the wall time it idles, waiting for the host (batch gathering and the
host-to-device copy, the optimizer's launches, Python). Named markers give the host-side suspects.
Everything here runs on a CPU (the functions take plain numbers), so that tests need no CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unveil.errors import UnveilError

#: Host-side suspects of a gap: label -> (key prefixes, which time). "cpu": inclusive CPU time of the matching
#: operators; "device": their self device time. Listed separately (they may nest), never summed.
MARKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "optimizer step (CPU, inclusive)": (("Optimizer.step",), "cpu"),
    "optimizer zero_grad (CPU, inclusive)": (("Optimizer.zero_grad",), "cpu"),
    "host-to-device copies (GPU)": (("Memcpy HtoD",), "device"),
    "tensor to Python number (CPU, waits for the GPU)": (("aten::_local_scalar_dense",), "cpu"),
    "device synchronisation (CPU)": (("cudaDeviceSynchronize", "cudaStreamSynchronize"), "cpu"),
}


class ProfileError(UnveilError, ValueError):
    """A profile cannot be summarised (no wall time, no step, fewer steps ran than were to be profiled)."""


@dataclass(frozen=True)
class OpTime:
    """One operator of a profile, summed over its calls the way ``prof.key_averages()`` does (times in µs).
    ``on_device``: a device event (kernel, copy) whose self time counts as GPU busy time; ``annotation``: a
    ``record_function`` range (``Optimizer.step#SGD.step``, ``ProfilerStep#3``), whose self CPU time is Python."""

    name: str
    calls: int
    self_device_us: float
    self_cpu_us: float
    cpu_total_us: float
    on_device: bool
    annotation: bool = False


def ops_from_profiler(profiler: Any) -> list[OpTime]:
    """The operators of a finished ``torch.profiler.profile`` (its ``key_averages()``) as :class:`OpTime`."""
    from torch.autograd import DeviceType

    return [OpTime(str(event.key), int(event.count), float(event.self_device_time_total),
                   float(event.self_cpu_time_total), float(event.cpu_time_total),
                   event.device_type != DeviceType.CPU and not event.is_user_annotation,
                   bool(event.is_user_annotation))
            for event in profiler.key_averages()]


def _top(ops: Iterable[OpTime], attribute: str, wall_us: float, top: int) -> list[dict[str, Any]]:
    ranked = sorted((op for op in ops if getattr(op, attribute) > 0), key=lambda op: (-getattr(op, attribute), op.name))
    return [{"name": op.name, "calls": op.calls, "ms": round(getattr(op, attribute) / 1000, 3),
             "share_of_wall": round(getattr(op, attribute) / wall_us, 4)} for op in ranked[:top]]


def _marker(ops: Sequence[OpTime], prefixes: tuple[str, ...], kind: str) -> float:
    attribute = "cpu_total_us" if kind == "cpu" else "self_device_us"
    return sum(getattr(op, attribute) for op in ops if op.name.startswith(prefixes))


def profile_summary(ops: Sequence[OpTime], wall_us: float, steps: int, batch_size: int, top: int = 15,
                    **context: Any) -> dict[str, Any]:
    """Where ``wall_us`` of ``steps`` training steps went: GPU busy and idle fractions, the markers (ms), the
    ``top`` kernels and copies (device events), the ``top`` operators by self CUDA time (the operators that
    launched them) and by self CPU time (ms and share of the wall time), and the rate."""
    if not wall_us > 0 or steps < 1:
        raise ProfileError(f"a profile needs a positive wall time and at least one step; got {wall_us} µs, {steps}")
    busy = sum(op.self_device_us for op in ops if op.on_device)
    return {**context, "steps": steps, "batch_size": batch_size, "wall_ms": round(wall_us / 1000, 3),
            "images_per_second": round(steps * batch_size / (wall_us / 1e6), 1),
            "gpu_busy_ms": round(busy / 1000, 3), "gpu_busy_fraction": round(min(busy / wall_us, 1.0), 4),
            "gpu_idle_fraction": round(max(1.0 - busy / wall_us, 0.0), 4),
            "markers_ms": {label: round(_marker(ops, prefixes, kind) / 1000, 3)
                           for label, (prefixes, kind) in MARKERS.items()},
            "top_kernels": _top([op for op in ops if op.on_device], "self_device_us", wall_us, top),
            "top_operators_self_device": _top([op for op in ops if not (op.on_device or op.annotation)],
                                              "self_device_us", wall_us, top),
            "top_self_cpu": _top(ops, "self_cpu_us", wall_us, top)}


def _table(title: str, entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = [f"  {title}:", f"    {'ms':>10}  {'wall':>6}  {'calls':>6}  name"]
    lines += [f"    {e['ms']:>10.3f}  {e['share_of_wall']:>6.1%}  {e['calls']:>6}  {e['name'][:100]}" for e in entries]
    return lines if entries else [*lines, "    (none)"]


def profile_text(summaries: Sequence[dict[str, Any]]) -> str:
    """The summaries of :func:`profile_summary` as a plain-text report, one block per profiled loop."""
    blocks = []
    for summary in summaries:
        head = " ".join(f"{k}={summary[k]}" for k in ("arch", "loop") if k in summary)
        lines = [f"{head}: {summary['steps']} steps of {summary['batch_size']} in {summary['wall_ms']:.3f} ms "
                 f"({summary['images_per_second']:,.1f} images/s); GPU busy {summary['gpu_busy_ms']:.3f} ms = "
                 f"{summary['gpu_busy_fraction']:.1%}, idle {summary['gpu_idle_fraction']:.1%}"]
        lines += [f"  {label}: {ms:.3f} ms" for label, ms in summary["markers_ms"].items()]
        lines += _table("top kernels and copies by device time", summary["top_kernels"])
        lines += _table("top operators by self CUDA time", summary["top_operators_self_device"])
        lines += _table("top operators by self CPU time", summary["top_self_cpu"])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
