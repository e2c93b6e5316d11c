"""The contract of each registered kind, checked when a component registers.

A plugin that registers a loss taking two arguments, a sampler without `on_block`, or a critic
without `denoise` fails at import time with one line naming the class and the missing piece,
instead of mid-run. The contracts are written out for plugin authors in docs/architecture.md.

A contract checks names only (methods, constructor keywords, call parameters): what the values
mean is documented next to each kind (samplers/common.py, losses: trainer/step.py's StepContext).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Contract:
    signature: str                       # one line for the error message
    call_positional: int | None = None   # positional parameters __call__ takes (self excluded)
    call_keywords: tuple[str, ...] = ()  # keyword parameters __call__ must accept
    init_keywords: tuple[str, ...] = ()  # constructor keywords the caller hands in (not from the recipe)
    methods: tuple[str, ...] = ()        # callables the component must have
    attributes: tuple[str, ...] = ()     # class-level attributes (or properties) it must declare
    forward_keywords: tuple[str, ...] = ()  # keyword parameters forward() must accept (models)
    method_positional: tuple[tuple[str, int], ...] = ()  # (method, positional arguments it is called with)

    def problems(self, obj) -> list[str]:
        out = []
        is_class = inspect.isclass(obj)
        for name in self.methods:
            if not callable(getattr(obj, name, None)):
                out.append(f"has no method '{name}'")
        for name in self.attributes:
            if not hasattr(obj, name) and name not in getattr(obj, "__annotations__", {}):
                out.append(f"declares no '{name}'")
        if self.init_keywords and is_class:
            init = None if obj.__init__ is object.__init__ else obj.__init__  # no __init__: no keywords
            out += [f"its constructor takes no keyword '{k}'" for k in self.init_keywords
                    if init is None or not _accepts(init, k)]
        if self.forward_keywords and callable(getattr(obj, "forward", None)):
            out += [f"forward() takes no keyword '{k}'" for k in self.forward_keywords
                    if not _accepts(obj.forward, k)]
        for name, n in self.method_positional:
            method = _own(obj, name) if is_class else None
            if callable(method):
                out += [f"{name}() is called with {n} positional argument(s), it takes ({taken})"
                        for taken in _positional_mismatch(method, n, is_class)]
        if self.call_positional is not None or self.call_keywords:
            # An instance's __call__ comes from its class (object's own is type.__call__: constructing).
            call = _own(obj, "__call__") if is_class else obj
            if call is None:
                return out + ["is not callable (no __call__)"]
            if self.call_positional is not None:
                out += [f"is called with {self.call_positional} positional argument(s), its __call__ takes ({taken})"
                        for taken in _positional_mismatch(call, self.call_positional, is_class)]
            out += [f"its __call__ takes no keyword '{k}'" for k in self.call_keywords if not _accepts(call, k)]
        return out


def _own(cls, name: str):
    """`name` as the class (or a base other than object) defines it, unbound; None if none does."""
    for klass in cls.__mro__[:-1]:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _positional_mismatch(fn, n: int, is_method: bool) -> list[str]:
    """[its positional parameters, joined] if `fn` cannot be called with `n` positional arguments
    (after self, for a method); [] if it can."""
    sig = _signature(fn)
    if sig is None:
        return []
    params = list(sig.parameters.values())
    if is_method and params and not isinstance(fn, (staticmethod, classmethod)):
        params = params[1:]  # self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    var = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(required) > n or (len(positional) < n and not var):
        return [", ".join(p.name for p in positional)]
    return []


def _signature(fn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _accepts(fn, name: str) -> bool:
    sig = _signature(fn)
    if sig is None:
        return True
    params = sig.parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


SAMPLER_KEYWORDS = ("generator", "exit_generator", "negative_text", "context", "on_block")

CONTRACTS: dict[str, Contract] = {
    "losses": Contract("loss(s: StepContext) -> (scalar tensor, {name: float})", call_positional=1),
    "real_sources": Contract("source(s: StepContext) -> x_real [B, F, C, H, W]", call_positional=1),
    "samplers": Contract(
        "Sampler(..., scheduler=flow)(model, noise, text, *, generator, exit_generator, negative_text, "
        "context, on_block) -> Rollout; declares steps, needs_context",
        call_positional=3, call_keywords=SAMPLER_KEYWORDS, init_keywords=("scheduler",),
        attributes=("needs_context",)),
    "timestep_samplers": Contract("T(..., scheduler=flow)(batch_size, generator=None, device='cpu') -> t [batch_size]",
                                  call_positional=1, call_keywords=("generator", "device"),
                                  init_keywords=("scheduler",)),
    "critics": Contract("critic.denoise(x_t, t, text) -> v; critic.logit(x_t, t, text) -> [B] (may raise TypeError)",
                        methods=("denoise", "logit"), method_positional=(("denoise", 3), ("logit", 3))),
    "models": Contract("model(x, t, text, *, causal=None, clean_x=None, ...) -> v; Model.from_pretrained(dir, **kw); "
                       "declares `config: dict` (architecture keys such as in_channels, patch_size; may be empty)",
                       methods=("forward", "from_pretrained"), forward_keywords=("causal", "clean_x"),
                       attributes=("config",)),
    "vaes": Contract("vae.encode / decode / latent_shape(frames, h, w) / stream_decoder() (None: cannot stream)",
                     methods=("encode", "decode", "latent_shape", "stream_decoder")),
    "schedulers": Contract("the flow-matching convention (schedulers/flow_match.py)",
                           methods=("sigma", "warp", "step_list", "add_noise", "x0_from_v", "euler_step")),
}
