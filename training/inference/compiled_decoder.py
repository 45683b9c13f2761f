"""The mask decoder under ``torch.compile`` for clicks, warmed in the background, eager until then.

Why: on a 2-core CPU the eager vit_t decoder takes 60-90 ms a click, most of it memory-bound
elementwise work between the matrix products; Inductor fuses it (about 2x faster, same masks).

- What is compiled is the family's ``predict_masks`` (``training.model.families``: SAM 1's decoder takes the
  embedding; SAM 2.1's also the two high-resolution maps kept beside it), every mask token out; the family's
  ``select`` then picks the masks eagerly (SAM 2.1's pick depends on the masks' values).
- One compiled function serves every decoder: the module is an argument, and dynamo (inlining
  built-in nn modules) turns its parameters into graph inputs. So a new adapter version, whose
  tensors are copied into the live decoder in place, runs the same compiled code, and so does
  another model of the same architecture. A graph is compiled per decoder architecture (SAM's
  own, the LoRA one) and per intra-op thread count (dynamo guards on it); the prompt-token count
  is a dynamic dimension, and the graph returns every mask token, so ``multimask`` is chosen after.
- Inputs are made uniform first (contiguous inference tensors): features (SAM 2.1's high-resolution
  maps too) arrive channels-last from the encoder, or as plain tensors from the disk store, and dynamo
  guards on strides and dispatch keys: either would otherwise compile again on a request.
- SAM's own decoder never changes in a running process, so it is compiled with its weights folded in
  (Inductor's freezing: matrix weights prepacked for oneDNN; the decoder 30 -> 21-24 ms with vit_t at
  1024 px, 2 threads, bf16). A decoder declared ``fixed`` gets such a graph of its own; a second decoder
  with the same weights (another adapter kind's copy of SAM's) shares the first one's graph.
- Kernels read the thread count when they run (``cpp.dynamic_threads``): the predictor caps a
  click's threads to the free cores while a training job runs, and kernels compiled for two threads
  would wait for a descheduled second one.
- Until ``warm`` has compiled every graph (or when compiling fails or there is no C++ compiler),
  calls run the eager decoder: start-up and the first clicks never wait for a compile.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

from training.inference.priority import lower_this_threads_priority
from training.model.families.base import Family
from training.model.features import ImageFeatures

log = logging.getLogger(__name__)

__all__ = ["CompiledDecoder"]

# What a warm thread yields to: clicks and the encoder run at the backend's priority, the compile below them.
WARM_NICENESS = 10
# Graphs beyond the warmed ones before dynamo gives up on a function (a second image size, say).
GRAPH_SLACK = 8
# Paths /health reports.
COMPILED, EAGER = "compiled", "eager"

_warming: ContextVar[bool] = ContextVar("samloop_decoder_warming", default=False)

DecoderOutput = tuple[torch.Tensor, torch.Tensor]


def _predict_masks(family: Family, decoder: nn.Module, image_pe: torch.Tensor, sparse: torch.Tensor,
                   dense: torch.Tensor, *features: torch.Tensor) -> DecoderOutput:
    # All mask tokens: the compiled graph then serves both multimask values (one graph, not two). The
    # features travel as loose tensors: each one a graph input that dynamo guards like the others.
    return family.predict_masks(decoder, ImageFeatures.from_tensors(list(features)), image_pe, sparse, dense)


class CompiledDecoder:
    """Runs a family's decoder call (``Family.decode``) compiled once ready, eagerly before and after any failure.

    ``backend``: ``inductor`` (the real thing) or any other ``torch.compile`` backend name
    (tests use ``eager`` to count graphs without compiling C++). ``compiles`` counts graphs
    handed to the backend: each is a compile (a recompile on the request path shows up there).
    """

    def __init__(self, enabled: bool = True, cache_dir: Path | None = None, backend: str = "inductor",
                 off_reason: str = "COMPILE_DECODER=false") -> None:
        self.enabled = enabled
        self.cache_dir = cache_dir
        self.backend = backend
        self.compiles = 0
        self.warm_seconds: float | None = None
        self.reason = "warming up" if enabled else off_reason
        self._ready = threading.Event()
        self._failed = False
        self._lock = threading.Lock()
        self._compiled: Callable[..., DecoderOutput] | None = None
        # Decoders whose weights never change, each with its own compiled graph (weights folded in).
        self._fixed: list[tuple[nn.Module, Callable[..., DecoderOutput]]] = []

    # ----- state ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._failed

    @property
    def path(self) -> str:
        """Which decoder answers clicks now: ``compiled`` or ``eager``."""
        return COMPILED if self.ready else EAGER

    def describe(self) -> dict:
        return {"path": self.path, "reason": None if self.ready else self.reason, "compiles": self.compiles,
                "warm_seconds": self.warm_seconds}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until warming ended (compiled or given up); True when it did within ``timeout``."""
        return self._ready.wait(timeout)

    # ----- calls ---------------------------------------------------------------------------------
    def __call__(self, family: Family, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor,
                 sparse: torch.Tensor, dense: torch.Tensor, multimask: bool) -> DecoderOutput:
        """``family.decode(decoder, features, image_pe, sparse, dense, multimask)``, compiled once warm."""
        if not (self.ready or (_warming.get() and not self._failed)):
            return family.decode(decoder, features, image_pe, sparse, dense, multimask)
        sparse = _uniform(sparse)
        # Prompt counts vary per click; without this the second count would compile again.
        torch._dynamo.maybe_mark_dynamic(sparse, 1)
        try:
            fixed = self._fixed_function(decoder)
            inputs = (_uniform(image_pe), sparse, _uniform(dense), *map(_uniform, features.tensors()))
            if fixed is None:
                masks, iou = self._function()(family, decoder, *inputs)
            else:
                with _folding_weights():
                    masks, iou = fixed(family, *inputs)
            return family.select(decoder, masks, iou, multimask)
        except Exception as exc:
            if _warming.get():
                raise
            # A recompile that failed on a request: answer eagerly from now on rather than fail clicks.
            self._failed = True
            self.reason = f"compiled call failed: {type(exc).__name__}"
            log.exception("clicks use the eager mask decoder from now on: %s", self.reason)
            return family.decode(decoder, features, image_pe, sparse, dense, multimask)

    def _function(self) -> Callable[..., DecoderOutput]:
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(_predict_masks, backend=self._count_and_compile)
            return self._compiled

    def fixed(self, decoder: nn.Module) -> nn.Module:
        """Declare that ``decoder``'s weights never change: it is compiled with them folded in. Returns
        the decoder to pass in its place: an earlier fixed one with equal weights, whose graph serves both."""
        with self._lock:
            for known, _ in self._fixed:
                if _same_weights(known, decoder):
                    return known
            frozen = torch.compile(_FixedDecoder(decoder), backend=functools.partial(self._count_and_compile,
                                                                                     freeze=True))
            self._fixed.append((decoder, frozen))
            return decoder

    def _fixed_function(self, decoder: nn.Module) -> Callable[..., DecoderOutput] | None:
        return next((function for known, function in self._fixed if known is decoder), None)

    def _count_and_compile(self, graph: torch.fx.GraphModule, inputs: list, freeze: bool = False) -> Callable:
        self.compiles += 1
        if self.backend != "inductor":
            return torch._dynamo.lookup_backend(self.backend)(graph, inputs)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(graph, inputs, config_patches={"cpp.dynamic_threads": True, "freezing": freeze})

    # ----- warming -------------------------------------------------------------------------------
    def allow_graphs(self, count: int) -> None:
        """Let dynamo keep ``count`` graphs of the decoder (its default limit of 8 would send the
        rest back to eager without a word). Process-wide: dynamo has no per-function limit."""
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, count + GRAPH_SLACK)

    def start(self, warm: Callable[[], None]) -> threading.Thread | None:
        """Run ``warm`` (calls that go through this object) in a background thread; clicks are
        compiled once it returns. Does nothing when disabled."""
        if not self.enabled:
            return None
        if self.backend == "inductor":
            _trace_inductors_placeholder()
        thread = threading.Thread(target=self.warm, args=(warm,), name="decoder-compile", daemon=True)
        thread.start()
        return thread

    def warm(self, warm: Callable[[], None]) -> bool:
        """Compile by running ``warm`` in this thread; True when the compiled decoder is ready."""
        import time

        started = time.perf_counter()
        try:
            lower_this_threads_priority(WARM_NICENESS)  # Inductor's compile subprocesses inherit it
            self._prepare()
            with _warming_here():
                warm()
        except Exception as exc:  # any failure of the compiler stack means: stay eager, say so once
            self._failed = True
            self.reason = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.warning("clicks use the eager mask decoder: %s", self.reason)
        else:
            self.warm_seconds = round(time.perf_counter() - started, 1)
            self.reason = ""
            log.info("clicks use the compiled mask decoder (%d graphs, warm in %.1f s)", self.compiles,
                     self.warm_seconds)
        finally:
            self._ready.set()
        return self.ready

    def _prepare(self) -> None:
        """Inductor's cache under ``cache_dir`` (an operator's TORCHINDUCTOR_CACHE_DIR wins), and a C++
        compiler, checked before the first compile so that its absence is named in one line."""
        if self.backend != "inductor":
            return
        if self.cache_dir is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir)
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler as error:
            raise RuntimeError("no C++ compiler found (Inductor looks for $CXX, else g++)") from error


class _FixedDecoder(nn.Module):
    """``_predict_masks`` of one decoder, as a module: Inductor folds in the weights of a compiled module
    run without autograd, never those of a module passed as an argument."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, family: Family, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                *features: torch.Tensor) -> DecoderOutput:
        return _predict_masks(family, self.decoder, image_pe, sparse, dense, *features)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(
        first[k].shape == second[k].shape and torch.equal(first[k], second[k]) for k in first)


def _trace_inductors_placeholder() -> None:
    """Inductor's first lowering runs ``torch.fx.symbolic_trace`` once per process (a placeholder graph,
    ``loop_body.InterpreterShim``), which swaps ``nn.Module.__call__`` for every thread while it traces:
    an image encoded in another thread at that moment failed with "module is not installed as a
    submodule" (a pre-encoding run in the benchmark, 2026-12-07). Done here, before the warm-up thread
    and while the caller starts the service, it cannot meet a concurrent model call (~1 s: the import)."""
    try:
        from torch._inductor.loop_body import InterpreterShim

        InterpreterShim._dummy_gm()
    except (ImportError, AttributeError) as exc:  # another torch: the warm-up still works, the race may not be closed
        log.warning("could not trace Inductor's placeholder graph ahead (%s)", exc)


def _uniform(tensor: torch.Tensor) -> torch.Tensor:
    """Contiguous, and an inference tensor under inference mode: dynamo guards on strides and on
    dispatch keys, and an embedding read back from the disk store is neither (4 MB copied, ~1 ms)."""
    if torch.is_inference_mode_enabled() and not tensor.is_inference():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor.contiguous()


def _folding_weights() -> contextlib.AbstractContextManager:
    """While warming: dynamo traces a fixed decoder's weights as constants only when Inductor's
    freezing is on as it traces (a compile option alone comes too late). Scoped to the warm thread's
    calls: the flag is process-wide, and a decoder traced under it could not take a new adapter
    version's weights; a graph traced on a request later (an unforeseen recompile) stays unfrozen."""
    if not _warming.get():
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


@contextlib.contextmanager
def _warming_here() -> Iterator[None]:
    token = _warming.set(True)
    try:
        yield
    finally:
        _warming.reset(token)

