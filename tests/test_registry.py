import pytest

from oneforcing.errors import RecipeError, RegistryError
from oneforcing.registry import Registry, build


@pytest.fixture
def reg():
    r = Registry("things")

    @r.register("adder")
    class Adder:
        """Adds."""

        def __init__(self, weight: float, offset: int = 0, name: str | None = None, steps: list[int] = (1,)):
            self.weight, self.offset, self.name, self.steps = weight, offset, name, steps

    @r.register("pair")
    class Pair:
        def __init__(self, left: Adder, right: Adder | None = None, raw: dict | None = None):
            self.left, self.right, self.raw = left, right, raw

    @r.register("many")
    class Many:
        def __init__(self, items: list[Adder]):
            self.items = items

    return r


def test_register_and_build(reg):
    obj = build({"type": "adder", "weight": 2, "steps": [1, 2]}, reg)
    assert obj.weight == 2.0 and isinstance(obj.weight, float)  # int is widened to float
    assert obj.steps == [1, 2]


def test_duplicate_name_is_an_error_unless_replaced(reg):
    with pytest.raises(RegistryError, match="already registered"):
        @reg.register("adder")
        class Other:
            pass

    @reg.register("adder", replace=True)
    class Replacement:
        def __init__(self):
            pass

    assert isinstance(build({"type": "adder"}, reg), Replacement)


def test_unknown_type_suggests_close_match(reg):
    with pytest.raises(RegistryError) as exc:
        build({"type": "addr", "weight": 1}, reg, file="r.yaml", path="losses[0]")
    msg = str(exc.value)
    assert "did you mean 'adder'" in msg and "r.yaml" in msg and "losses[0].type" in msg
    assert "pair" in msg  # lists the registry's names


def test_unknown_kwarg_names_file_and_dotted_path(reg):
    with pytest.raises(RecipeError) as exc:
        build({"type": "adder", "wieght": 1}, reg, file="r.yaml", path="generator_losses[1]")
    msg = str(exc.value)
    assert msg.startswith("r.yaml: generator_losses[1].wieght:")
    assert "did you mean 'weight'" in msg


def test_missing_required_kwarg(reg):
    with pytest.raises(RecipeError, match="needs key 'weight'"):
        build({"type": "adder"}, reg, file="r.yaml")


@pytest.mark.parametrize("key,value", [("weight", "heavy"), ("offset", 1.5), ("offset", True),
                                       ("name", 3), ("steps", [1, "x"])])
def test_wrong_type_is_an_error(reg, key, value):
    cfg = {"type": "adder", "weight": 1.0, key: value}
    with pytest.raises(RecipeError, match=f"{key}: .*expected"):
        build(cfg, reg, file="r.yaml")


def test_nested_configs_are_built_recursively(reg):
    pair = build({"type": "pair", "left": {"type": "adder", "weight": 1},
                  "right": {"type": "adder", "weight": 3}, "raw": {"type": "kept", "x": 1}}, reg)
    assert pair.left.weight == 1.0 and pair.right.weight == 3.0
    assert pair.raw == {"type": "kept", "x": 1}  # a dict-annotated parameter keeps its dict
    many = build({"type": "many", "items": [{"type": "adder", "weight": 1}, {"type": "adder", "weight": 2}]}, reg)
    assert [i.weight for i in many.items] == [1.0, 2.0]


def test_nested_error_carries_the_nested_path(reg):
    with pytest.raises(RecipeError) as exc:
        build({"type": "many", "items": [{"type": "adder", "weight": 1}, {"type": "adder", "wight": 2}]},
              reg, file="r.yaml", path="critic")
    assert "critic.items[1].wight" in str(exc.value)


def test_provided_kwargs_are_not_recipe_keys(reg):
    obj = build({"type": "adder"}, reg, weight=4.0)
    assert obj.weight == 4.0


def test_explicit_kind_prefix_uses_that_registry():
    from oneforcing.registry import build_from_any

    sched = build_from_any({"type": "schedulers:flow_match", "shift": 3})
    assert sched.shift == 3.0
    with pytest.raises(RecipeError, match="unknown registry kind"):
        build_from_any({"type": "schedulrs:flow_match"})


def test_int_to_float_inside_containers():
    r = Registry("opts")

    @r.register("adamw")
    class Opt:
        def __init__(self, betas: tuple[float, float] = (0.9, 0.999), lrs: list[float] | None = None):
            self.betas, self.lrs = betas, lrs

    opt = build({"type": "adamw", "betas": [0, 0.999], "lrs": [1, 2.5]}, r)
    assert opt.betas == (0.0, 0.999) and all(type(b) is float for b in opt.betas)
    assert opt.lrs == [1.0, 2.5] and type(opt.lrs[0]) is float


def test_a_string_that_reads_as_a_finite_float_is_a_float_where_one_is_expected():
    """YAML reads `1e-5` (no dot) as a string; every user types it."""
    from oneforcing.config.recipe import apply_overrides

    r = Registry("opts")

    @r.register("adamw")
    class Opt:
        def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None,
                     name: str = "x"):
            self.lr, self.betas, self.eps, self.name = lr, betas, eps, name

    cfg = apply_overrides({"type": "adamw"}, ["lr=1e-5", "betas=[0, 1e-3]", "eps=1E-8", "name=1e-5"])
    assert cfg["lr"] == "1e-5"  # as YAML reads it
    opt = build(cfg, r)
    assert (opt.lr, opt.betas, opt.eps) == (1e-5, (0.0, 1e-3), 1e-8) and type(opt.lr) is float
    assert opt.name == "1e-5"  # a string stays a string where a string is expected
    for bad in ("nan", "-inf", "1e-5x", "Infinity"):
        with pytest.raises(RecipeError, match=f"lr: opt 'adamw': expected float, got str '{bad}'"):
            build({"type": "adamw", "lr": bad}, r)


def test_validate_checks_without_building(reg):
    from oneforcing.registry import validate

    built = []

    @reg.register("loud")
    class Loud:
        def __init__(self, inner: object, n: int = 1):
            built.append(self)

    validate({"type": "loud", "inner": {"type": "adder", "weight": 1}, "n": 2}, reg)
    assert built == []
    with pytest.raises(RecipeError, match=r"x.inner.wieght"):
        validate({"type": "loud", "inner": {"type": "adder", "wieght": 1}}, reg, path="x")
    with pytest.raises(RecipeError, match=r"x.n: .*expected int"):
        validate({"type": "loud", "inner": {"type": "adder", "weight": 1}, "n": "two"}, reg, path="x")
    with pytest.raises(RecipeError, match="needs key 'inner'"):
        validate({"type": "loud"}, reg)


def test_optional_list_of_dicts_stays_raw(reg):
    @reg.register("holder")
    class Holder:
        def __init__(self, cfgs: list[dict] | None = None, objs: list[object] | None = None):
            self.cfgs, self.objs = cfgs, objs

    h = build({"type": "holder", "cfgs": [{"type": "adder", "weight": 1}],
               "objs": [{"type": "adder", "weight": 2}]}, reg)
    assert h.cfgs == [{"type": "adder", "weight": 1}]
    assert h.objs[0].weight == 2.0


def test_validate_walks_nested_configs_as_build_does():
    """A loss with a nested `real: {type: ...}` (a component of another kind): build finds it
    in the registry that holds the name, and so must validate (`oneforcing show` used to look
    a nested sampler up among the losses and reject a recipe that trains)."""
    from oneforcing.registry import LOSSES, REAL_SOURCES, load_builtins, validate

    load_builtins()
    built = []

    @LOSSES.register("_test_nested_real_loss")
    class WithReal:
        def __init__(self, real: object, weight: float = 1.0):
            built.append(real)

        def __call__(self, s):
            return s.latents.sum() * 0, {}

    try:
        cfg = {"type": "_test_nested_real_loss", "real": {"type": "student_rollout"}}
        assert REAL_SOURCES.get("student_rollout") and "student_rollout" not in LOSSES
        validate(cfg, LOSSES, path="generator_losses[0]")
        assert built == []  # validate constructs nothing
        build(cfg, LOSSES, path="generator_losses[0]")
        assert len(built) == 1 and type(built[0]).__name__ == "StudentRolloutReal"
        bad = {**cfg, "real": {"type": "student_rollout", "stpes": [1000]}}
        for check in (validate, build):  # the same error, at the same dotted key, either way
            with pytest.raises(RecipeError, match=r"generator_losses\[0\]\.real\.stpes"):
                check(bad, LOSSES, path="generator_losses[0]")
        # A sampler takes the recipe's scheduler, which only a job hands in: never nested.
        nested_sampler = {**cfg, "real": {"type": "causal_inference"}}
        for check in (validate, build):
            with pytest.raises(RecipeError, match=r"generator_losses\[0\]\.real: sampler 'causal_inference' needs "
                                                  r"the recipe's 'scheduler', which the job hands in"):
                check(nested_sampler, LOSSES, path="generator_losses[0]")
    finally:
        LOSSES.unregister("_test_nested_real_loss")


def test_every_kind_has_a_contract():
    from oneforcing.registry import CONTRACTS, REGISTRIES

    assert sorted(k for k, r in REGISTRIES.items() if r.contract is None) == []
    assert set(CONTRACTS) == set(REGISTRIES)


def test_training_data_must_be_a_batch_stream():
    """Every dataset registers as a batch stream or an indexed split; the trainer takes only the
    first (it calls batches(n) and saves state_dict()), refused in one line naming the recipe key."""
    from oneforcing.errors import UserError
    from oneforcing.registry import DATASETS
    from oneforcing.registry.contracts import BATCH_STREAM, require

    world = build({"type": "toy_world", "split": "train", "num_examples": 2}, DATASETS)
    with pytest.raises(UserError) as err:
        require(world, BATCH_STREAM, what="dataset 'toy_world'", key="data")
    text = str(err.value)
    assert text.startswith("data: dataset 'toy_world' (ToyWorld) has no method 'batches'") and "\n" not in text
    import oneforcing.testing.train_fixtures  # noqa: F401 - registers random_latents

    require(build({"type": "random_latents"}, DATASETS), BATCH_STREAM, what="x", key="data")  # no error
