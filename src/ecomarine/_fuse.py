"""The fused inference path: networks traced and frozen once, BatchNorm folded.

``torch.jit.freeze`` folds each BatchNorm into the convolution before it and inlines the
weights, which removes a large share of the backbone's inference time on a CPU (about
1.7x for the embedded EfficientNet-Lite0 here, ``benchmarks/speed.py``). A frozen graph
is built the first time a module meets an input shape, checked against the eager module
on that very batch (cosine >= :data:`MIN_COSINE` for every output), and cached; any
disagreement, or any failure to trace, leaves that shape on the eager path (logged).
``ECOMARINE_FUSE=0`` switches the fused path off everywhere.

``ECOMARINE_BACKEND=openvino`` (extra ``openvino``) or ``onnxruntime`` (extra ``onnx``)
runs the networks on that runtime instead of frozen TorchScript graphs, exported to ONNX
from the same weights (CPU only; a GPU keeps PyTorch). On a 2-core AVX2 CPU the networks
ran 2.5x (OpenVINO) and 1.9x (ONNX Runtime) eager PyTorch (``benchmarks/speed.py --parts
throughput``); not the default, since it needs an extra and the gain depends on the CPU.
A session is checked against the eager module on a fixed probe batch and on the batch
that built it; if they disagree it is refused with an error (never a silent fallback),
since the user asked for that backend.

A graph is built only once a shape has come back :data:`BUILD_AFTER` times: tracing costs
a second or two, which a single prediction in a fresh process should not pay, while a
long run pays it once.

The cache must be cleared whenever the weights may change: :class:`FusedCache` owners do
it in ``train()`` (which ``eval()`` calls too) and ``load_state_dict()``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "BUILD_AFTER",
    "MIN_COSINE",
    "FusedCache",
    "Traced",
    "export_onnx",
    "fusion_enabled",
    "inference_backend",
]

logger = logging.getLogger(__name__)

#: The fused outputs must agree with the eager ones at least this well, row by row.
MIN_COSINE = 0.9999
#: Eager calls of one shape before its graph is built.
BUILD_AFTER = 2


def inference_backend() -> str:
    """The fused path's backend: ``ECOMARINE_BACKEND`` (``torch`` by default).

    Raises:
        ConfigError: For an unknown backend, or one whose runtime is not installed.
    """
    value = os.environ.get("ECOMARINE_BACKEND", "torch").strip().lower() or "torch"
    if value not in BACKENDS:
        raise ConfigError(f"ECOMARINE_BACKEND must be one of {BACKENDS}, got {value!r}")
    if value in _RUNTIMES:
        try:
            importlib.import_module(value)
        except ImportError as exc:
            extra = _RUNTIMES[value].extra
            raise ConfigError(
                f'ECOMARINE_BACKEND={value} needs the "{extra}" extra: '
                f'pip install "ecomarine[{extra}]"'
            ) from exc
    return value


def fusion_enabled() -> bool:
    """False when ``ECOMARINE_FUSE`` is ``0``, ``false`` or ``no``."""
    return os.environ.get("ECOMARINE_FUSE", "1").strip().lower() not in ("0", "false", "no")


def _agree(eager: tuple[Tensor, ...], fused: tuple[Tensor, ...]) -> bool:
    if len(eager) != len(fused):
        return False
    for a, b in zip(eager, fused, strict=True):
        if a.shape != b.shape:
            return False
        a2, b2 = a.float().reshape(len(a), -1), b.float().reshape(len(b), -1)
        if not torch.isfinite(b2).all():
            return False
        cos = torch.nn.functional.cosine_similarity(a2, b2, dim=1, eps=1e-12)
        if float(cos.min()) < MIN_COSINE:
            return False
    return True


class Traced(nn.Module):
    """One inference function of an owner module, as a module to trace.

    The owner is registered (its parameters become the graph's frozen constants), but
    this wrapper is never put into ``train()``/``eval()`` itself: that would reach the
    owner's own ``train()``, which clears the cache being filled.
    """

    def __init__(self, owner: nn.Module, fn: Callable[[Tensor], tuple[Tensor, ...]]) -> None:
        super().__init__()
        self.owner = owner
        self.__dict__["_fn"] = fn
        self.training = False  # the flag only, not a recursive eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Run the owner's function."""
        fn: Callable[[Tensor], tuple[Tensor, ...]] = self.__dict__["_fn"]
        return fn(x)


class FusedCache:
    """Frozen graphs of one module's inference functions, by name and input shape."""

    def __init__(self) -> None:
        self.enabled = True
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._seen: dict[tuple[Any, ...], int] = {}
        self._lock = threading.RLock()

    def clear(self) -> None:
        """Forget every graph (the weights may have changed)."""
        with self._lock:
            self._graphs.clear()
            self._seen.clear()

    def run(
        self, name: str, factory: Callable[[], nn.Module], x: Tensor
    ) -> tuple[Tensor, ...] | None:
        """The fused ``factory()`` module's outputs on ``x``, or ``None`` for the eager path.

        Args:
            name: Which function of the owner (one graph per name and input shape).
            factory: Builds the eager module (returns a tuple of tensors).
            x: The input batch; its shape beyond the batch size, dtype and device key
                the graph.
        """
        if not (self.enabled and fusion_enabled()) or x.dim() != 4 or len(x) == 0:
            return None
        backend = inference_backend()
        if backend in _RUNTIMES and x.device.type != "cpu":
            backend = "torch"  # the CPU builds of ONNX Runtime and OpenVINO
        key = (name, tuple(x.shape[1:]), x.dtype, str(x.device), backend)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                seen = self._seen.get(key, 0)
                if seen < BUILD_AFTER:
                    self._seen[key] = seen + 1
                    return None
                if backend in _RUNTIMES:
                    graph = _RUNTIMES[backend](factory(), x, key)
                else:
                    graph = self._build(factory(), x, key)
                self._graphs[key] = graph
        if graph is False:
            return None
        out: tuple[Tensor, ...] = graph(x)
        return out

    @staticmethod
    def _build(module: nn.Module, x: Tensor, key: tuple[Any, ...]) -> Any:
        try:
            with warnings.catch_warnings():
                # Tracing warns about Python values it records as constants: expected here,
                # as every graph is keyed by the input shape it was traced for.
                warnings.simplefilter("ignore")
                trace: Any = torch.jit.trace  # untyped in torch's stubs
                traced = trace(module, x, check_trace=False)
                graph = torch.jit.freeze(traced)
                eager, fused = module(x), graph(x)
        except Exception as exc:  # any tracing failure: stay on the eager path
            logger.info("fused path unavailable for %s (%s): eager", key, exc)
            return False
        if not _agree(tuple(eager), tuple(fused)):
            logger.warning("fused path disagrees with eager for %s: eager is used", key)
            return False
        logger.debug("fused path ready for %s", key)
        return graph


def export_onnx(module: nn.Module, example: Tensor) -> bytes:
    """``module`` (returning a tuple of tensors) as ONNX bytes, batch axis dynamic.

    Input ``x``, outputs ``y0, y1, ...``; opset 17, TorchScript exporter. Call it under ``torch.no_grad()``; the exporter's tracing notes are the caller's to
    silence.
    """
    import io  # noqa: PLC0415

    n_out = len(module(example))
    buf = io.BytesIO()
    torch.onnx.export(
        module, (example,), buf, input_names=["x"],  # type: ignore[arg-type]
        output_names=[f"y{i}" for i in range(n_out)],
        dynamic_axes={"x": {0: "batch"}, **{f"y{i}": {0: "batch"} for i in range(n_out)}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return buf.getvalue()


class _ExportedGraph:
    """A module exported to ONNX and run by another runtime, standing in for its function.

    Subclasses load the ONNX bytes (:meth:`_load`) and run a float32 NCHW array
    (:meth:`_run`). The result is checked against PyTorch on a fixed probe batch and on
    the batch that built it.

    Raises:
        ConfigError: When the export fails or the runtime disagrees with PyTorch.
    """

    runtime = ""
    #: The ecomarine extra that installs the runtime.
    extra = ""

    def __init__(self, module: nn.Module, x: Tensor, key: tuple[Any, ...]) -> None:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn((2, *x.shape[1:]), generator=gen, dtype=x.dtype)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing
            sample = x.detach().clone()
            try:
                onnx_model = export_onnx(module, probe)
            except Exception as exc:  # the exporter raises many kinds
                raise ConfigError(f"cannot export {key[0]} to ONNX: {exc}") from exc
            self._load(onnx_model)
            for batch in (probe, sample):
                if not _agree(tuple(module(batch)), self(batch)):
                    raise ConfigError(
                        f"{self.runtime} disagrees with PyTorch for {key[0]} "
                        f"{tuple(x.shape[1:])}; unset ECOMARINE_BACKEND to use PyTorch"
                    )
        logger.debug("%s session ready for %s", self.runtime, key)

    def _load(self, onnx_model: bytes) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        arr = x.detach().contiguous().cpu().numpy()
        return tuple(torch.from_numpy(np.ascontiguousarray(y)) for y in self._run(arr))


class _OrtGraph(_ExportedGraph):
    """An ONNX Runtime session (``ECOMARINE_BACKEND=onnxruntime``)."""

    runtime = "ONNX Runtime"
    extra = "onnx"

    def _load(self, onnx_model: bytes) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - optional dependency

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # No busy-waiting between calls: decode threads and PyTorch share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])

    def _run(self, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
        out: list[np.ndarray[Any, Any]] = self.session.run(None, {"x": x})
        return out


class _OpenVinoGraph(_ExportedGraph):
    """An OpenVINO compiled model on the CPU (``ECOMARINE_BACKEND=openvino``).

    Precision is pinned to float32: on CPUs with bfloat16 support OpenVINO would otherwise
    lower it on its own, and ecomarine enables lower precision only where it is measured.
    """

    runtime = "OpenVINO"
    extra = "openvino"

    def _load(self, onnx_model: bytes) -> None:
        import openvino as ov  # noqa: PLC0415 - optional dependency

        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(onnx_model, b""),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            },
        )
        self._lock = threading.Lock()  # one infer request: calls take turns

    def _run(self, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
        with self._lock:
            result = self.compiled(x)
            return [np.array(result[port]) for port in self.compiled.outputs]


_RUNTIMES: dict[str, type[_ExportedGraph]] = {
    "onnxruntime": _OrtGraph,
    "openvino": _OpenVinoGraph,
}

#: Inference backends of the fused path (``ECOMARINE_BACKEND``).
BACKENDS: tuple[str, ...] = ("torch", *_RUNTIMES)
