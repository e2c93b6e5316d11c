"""The contract of each registered kind, checked when a component registers.

Every kind in oneforcing.registry has one. A plugin that registers a loss taking two arguments, a
sampler without `on_block`, a dataset without `batches(n)` or a logger whose `log` takes one
argument fails at import time with one line naming the class and the missing piece, instead of
mid-run. The contracts are written out for plugin authors in docs/plugins.md.

A contract checks call shapes (methods, how many positional arguments each is called with,
constructor keywords, declared attributes); what a call returns is checked where it is cheap, at
the call (a loss: trainer/loop.py `_loss_result`; a sampler: samplers/common.py `checked_rollout`;
a dataset's batches: data/batch.py `as_batch`; a text encoder: data/pipeline.py `encode_text`).
What the values mean is documented next to each kind (samplers/common.py, trainer/step.py's
StepContext).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from oneforcing.errors import UserError


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
    init_bare: bool = False              # built with no arguments at all (attention backends: `cls()`)
    any_of: tuple["Contract", ...] = ()  # alternative shapes: the component must meet one of them

    def problems(self, obj) -> list[str]:
        if self.any_of:
            alternatives = [(alt, alt.problems(obj)) for alt in self.any_of]
            if any(not found for _, found in alternatives):
                return []
            return ["is neither " + " nor ".join(f"{alt.signature} ({'; '.join(found)})" for alt, found in alternatives)]
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
        if self.init_bare and is_class and obj.__init__ is not object.__init__:
            required = _required(obj.__init__, is_method=True)
            if required:
                out.append(f"is built with no arguments, its constructor requires ({', '.join(required)})")
        if self.forward_keywords and callable(getattr(obj, "forward", None)):
            out += [f"forward() takes no keyword '{k}'" for k in self.forward_keywords
                    if not _accepts(obj.forward, k)]
        for name, n in self.method_positional:
            method = _own(obj, name) if is_class else None
            if method is not None:  # a classmethod object is not callable itself
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


def _parameters(fn, is_method: bool) -> list[inspect.Parameter] | None:
    """`fn`'s parameters as a caller fills them: without self (a method) or cls (a classmethod)."""
    bound = is_method and not isinstance(fn, staticmethod)
    fn = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
    sig = _signature(fn)
    if sig is None:
        return None
    params = list(sig.parameters.values())
    return params[1:] if bound and params else params


def _required(fn, is_method: bool) -> list[str]:
    """The parameters a caller must fill (no default, not *args / **kw)."""
    params = _parameters(fn, is_method) or []
    return [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _positional_mismatch(fn, n: int, is_method: bool) -> list[str]:
    """[its positional parameters, joined] if `fn` cannot be called with `n` positional arguments
    (after self, for a method; after cls, for a classmethod); [] if it can."""
    params = _parameters(fn, is_method)
    if params is None:
        return []
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


def require(obj, contract: Contract, *, what: str, key: str) -> None:
    """A built component (not its class) meets `contract`, or one line naming the recipe key: for a
    narrower shape than the kind's registration contract (the trainer's data is a batch stream)."""
    problems = contract.problems(obj)
    if problems:
        raise UserError(f"{what} ({type(obj).__qualname__}) {'; '.join(problems)}; expected: {contract.signature} "
                        "(docs/plugins.md)", key=key)


SAMPLER_KEYWORDS = ("rng", "exit_rng", "negative_text", "context", "on_block")

# A training dataset (`data:`, `ode_data:` of a train recipe): the trainer draws batches of its
# micro-batch size and saves / restores the position with every checkpoint (exact resume).
BATCH_STREAM = Contract("a batch stream: ds.batches(batch_size) -> Iterator[Batch], ds.state_dict() -> dict, "
                        "ds.load_state_dict(state)",
                        methods=("batches", "state_dict", "load_state_dict"),
                        method_positional=(("batches", 1), ("state_dict", 0), ("load_state_dict", 1)))
# A split that jobs index (toy_world: scenes and prompts for the teacher jobs and ToyBench).
INDEXED_SPLIT = Contract("an indexed split: len(ds), ds[i] -> item dict",
                         methods=("__len__", "__getitem__"), method_positional=(("__getitem__", 1),))

CONTRACTS: dict[str, Contract] = {
    "losses": Contract("loss(s: StepContext) -> (scalar tensor, {name: float})", call_positional=1),
    "real_sources": Contract("source(s: StepContext) -> x_real [B, F, C, H, W]", call_positional=1),
    "samplers": Contract(
        "Sampler(..., scheduler=flow)(model, noise, text, *, rng, exit_rng, negative_text, "
        "context, on_block) -> Rollout; declares steps (its step list, model timesteps) and needs_context",
        call_positional=3, call_keywords=SAMPLER_KEYWORDS, init_keywords=("scheduler",),
        attributes=("steps", "needs_context")),
    "timestep_samplers": Contract("T(..., scheduler=flow)(batch_size, rng=None, device='cpu') -> t [batch_size]",
                                  call_positional=1, call_keywords=("rng", "device"),
                                  init_keywords=("scheduler",)),
    "critics": Contract("critic.denoise(x_t, t, text) -> v; critic.logit(x_t, t, text) -> [B] (may raise TypeError)",
                        methods=("denoise", "logit"), method_positional=(("denoise", 3), ("logit", 3))),
    "models": Contract("model(x, t, text, *, causal=None, clean_x=None, ...) -> v; Model.from_pretrained(dir, **kw); "
                       "declares `config: dict` (architecture keys such as in_channels, patch_size; may be empty)",
                       methods=("forward", "from_pretrained"), forward_keywords=("causal", "clean_x"),
                       attributes=("config",), method_positional=(("from_pretrained", 1),)),
    "vaes": Contract("vae.encode(video) / decode(latents) / latent_shape(frames, h, w) / stream_decoder() "
                     "(None: cannot stream)",
                     methods=("encode", "decode", "latent_shape", "stream_decoder"),
                     method_positional=(("encode", 1), ("decode", 1), ("latent_shape", 3), ("stream_decoder", 0))),
    "schedulers": Contract("the flow-matching convention (schedulers/flow_match.py): sigma(t), warp(s), "
                           "step_list(steps, warp=True), add_noise(x0, eps, t), x0_from_v(x_t, v, t), "
                           "euler_step(x, v, t, t_next)",
                           methods=("sigma", "warp", "step_list", "add_noise", "x0_from_v", "euler_step"),
                           method_positional=(("sigma", 1), ("warp", 1), ("step_list", 1), ("add_noise", 3),
                                              ("x0_from_v", 3), ("euler_step", 4))),
    "datasets": Contract("a batch stream (training data) or an indexed split", any_of=(BATCH_STREAM, INDEXED_SPLIT)),
    "jobs": Contract("Job(**recipe_keys).run(ctx: RunContext) -> None", methods=("run",),
                     method_positional=(("run", 1),)),
    "text_encoders": Contract("encoder.encode(prompts: list[str]) -> embedding [B, L, D] (padding zeroed)",
                              methods=("encode",), method_positional=(("encode", 1),)),
    "attention": Contract("Backend()(q, k, v, mask: FrameMask | None = None) -> out; "
                          "Backend.unavailable_reason(device) -> str | None (a classmethod)",
                          call_positional=3, call_keywords=("mask",), methods=("unavailable_reason",),
                          method_positional=(("unavailable_reason", 1),), init_bare=True),
    "metrics": Contract("metric(videos [B, T, 3, H, W] in [-1, 1], prompts: list[str]) -> {name: number}",
                        call_positional=2),
    "loggers": Contract("sink.start(run_dir, config, total_steps, start_step=0); sink.log(step, metrics: dict); "
                        "sink.close()",
                        methods=("start", "log", "close"),
                        method_positional=(("start", 3), ("log", 2), ("close", 0))),
}
