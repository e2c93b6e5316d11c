"""Third-party components arrive through the `oneforcing.plugins` entry-point group."""

import os
import subprocess
import sys
import re
import textwrap

import pytest


def make_plugin(root, *, broken=False):
    """A plugin package on disk with an entry-point dist-info (what pip install leaves behind)."""
    pkg = root / "acme_critics"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        """Acme's critics for oneforcing."""
        from oneforcing.registry import CRITICS

        @CRITICS.register("acme_probe")
        class AcmeProbe:
            """A linear-probe critic from a third-party package."""

            def __init__(self, layers: list[int] = (0,), width: int = 8):
                self.layers, self.width = list(layers), width

            def denoise(self, x_t, t, text):
                return 0 * x_t

            def logit(self, x_t, t, text):
                return x_t.flatten(1).mean(1)
    '''))
    eps = "[oneforcing.plugins]\nacme = acme_critics\n"
    if broken:
        (root / "broken_plugin.py").write_text("raise ImportError('needs libfoo >= 9')\n")
        eps += "broken = broken_plugin\n"
    dist = root / "acme_critics-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-critics\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(eps)
    return root


def run_cli(args, path, cwd):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's oneforcing
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), repo])}
    return subprocess.run([sys.executable, "-m", "oneforcing.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_plugin_critic_is_listed_with_its_package(tmp_path):
    make_plugin(tmp_path)
    proc = run_cli(["list", "critics"], tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "acme_probe" in ln)
    assert "[acme_critics]" in line and "linear-probe" in line


def test_plugin_critic_builds_from_a_recipe(tmp_path, monkeypatch):
    from oneforcing.config import load_recipe
    from oneforcing.registry import CRITICS, build, load_plugins

    make_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "r.yaml").write_text("job: dist_check\ncritic: {type: acme_probe, layers: [21, 29]}\n")
    load_plugins(force=True)
    try:
        critic = build(load_recipe(tmp_path / "r.yaml")["critic"], CRITICS, path="critic")
        assert critic.layers == [21, 29] and type(critic).__module__ == "acme_critics"
    finally:
        CRITICS.unregister("acme_probe")
        sys.modules.pop("acme_critics", None)


def test_broken_plugin_is_one_line_and_the_rest_still_loads(tmp_path):
    make_plugin(tmp_path, broken=True)
    proc = run_cli(["list", "critics"], tmp_path, tmp_path)
    assert proc.returncode == 0
    assert "acme_probe" in proc.stdout
    broken_lines = [ln for ln in proc.stderr.splitlines() if "broken" in ln]
    assert broken_lines and all("needs libfoo >= 9" in ln for ln in broken_lines)
    assert "Traceback" not in proc.stderr


def test_recipe_imports_register_components(tmp_path, capsys):
    from oneforcing.cli import main
    from oneforcing.registry import JOBS

    (tmp_path / "my_jobs.py").write_text(textwrap.dedent('''
        from oneforcing.registry import JOBS

        @JOBS.register("my_echo")
        class MyEcho:
            def __init__(self, text: str):
                self.text = text

            def run(self, ctx):
                print("echo:", self.text)
    '''))
    (tmp_path / "r.yaml").write_text("job: my_echo\nimports: [my_jobs]\ntext: hi\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["run", str(tmp_path / "r.yaml")]) == 0
        assert "echo: hi" in capsys.readouterr().out
    finally:
        sys.path.remove(str(tmp_path))
        JOBS.unregister("my_echo")
        sys.modules.pop("my_jobs", None)


@pytest.mark.parametrize("source,message", [
    ("from oneforcing.registry import LOSSES\n\ndef broken(:\n    pass\n",
     r"imports\[0\]: cannot import module 'my_broken': SyntaxError: .*my_broken\.py, line 3"),
    ("raise RuntimeError('needs a GPU driver')\n", r"imports\[0\]: cannot import module 'my_broken': RuntimeError: needs a GPU"),
    ("from oneforcing.registry import LOSSES\n\n@LOSSES.register('my_no_call')\nclass NoCall:\n    def forward(self, s):\n"
     "        return s\n", r"loss 'my_no_call' .* breaks the losses contract: is not callable \(no __call__\)"),
], ids=["syntax_error", "raises_at_import", "breaks_a_contract"])
def test_a_broken_recipe_import_is_one_line(tmp_path, capsys, source, message):
    import re

    from oneforcing.cli import main

    (tmp_path / "my_broken.py").write_text(source)
    (tmp_path / "r.yaml").write_text("job: toy_data\nimports: [my_broken]\nout: o\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["show", str(tmp_path / "r.yaml")]) == 2
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_broken", None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err


BAD_PLUGINS = [
    # (kind, class body, what the one-line error names)
    ("LOSSES", "def __call__(self, s, extra):\n        return s", "is called with 1 positional argument(s), its __call__ takes (s, extra)"),
    ("SAMPLERS", "needs_context = False\n    steps = [1000.0]\n    def __init__(self, scheduler=None): pass\n"
                 "    def __call__(self, model, noise, text, *, rng=None):\n        return None",
     "its __call__ takes no keyword 'exit_rng'"),
    ("SAMPLERS", "needs_context = False\n    steps = [1000.0]\n    def __call__(self, model, noise, text, **kw):\n"
                 "        return None",
     "its constructor takes no keyword 'scheduler'"),
    ("SAMPLERS", "needs_context = False\n    def __init__(self, scheduler=None): pass\n"
                 "    def __call__(self, model, noise, text, **kw):\n        return None",
     "declares no 'steps'"),
    ("CRITICS", "def forward(self, x, t, text):\n        return x", "has no method 'denoise'"),
    ("TIMESTEP_SAMPLERS", "def __init__(self, scheduler=None): pass\n    def __call__(self, n):\n        return n",
     "its __call__ takes no keyword 'rng'"),
    ("LOSSES", "def forward(self, s):\n        return s", "is not callable (no __call__)"),
    ("CRITICS", "def denoise(self, x_t, t):\n        return x_t\n    def logit(self, x_t, t, text):\n        return x_t",
     "denoise() is called with 3 positional argument(s), it takes (x_t, t)"),
    ("CRITICS", "def denoise(self, x_t, t, text, scale):\n        return x_t\n    def logit(self, x_t, t, text):\n        return x_t",
     "denoise() is called with 3 positional argument(s), it takes (x_t, t, text, scale)"),
    # the kinds that had no contract before: datasets, jobs, text encoders, attention, metrics, loggers
    ("DATASETS", "def __iter__(self):\n        yield from ()",
     "is neither a batch stream: ds.batches(batch_size) -> Iterator[Batch], ds.state_dict() -> dict, "
     "ds.load_state_dict(state) (has no method 'batches'; has no method 'state_dict'; has no method "
     "'load_state_dict') nor an indexed split: len(ds), ds[i] -> item dict (has no method '__len__'; has no "
     "method '__getitem__')"),
    ("DATASETS", "def batches(self):\n        yield from ()\n    def state_dict(self):\n        return {}\n"
                 "    def load_state_dict(self, state):\n        pass",
     "batches() is called with 1 positional argument(s), it takes ()"),
    ("JOBS", "def __init__(self, out: str):\n        self.out = out", "has no method 'run'"),
    ("JOBS", "def run(self):\n        pass", "run() is called with 1 positional argument(s), it takes ()"),
    ("TEXT_ENCODERS", "def __call__(self, prompts):\n        return prompts", "has no method 'encode'"),
    ("TEXT_ENCODERS", "def encode(self, prompts, device):\n        return prompts",
     "encode() is called with 1 positional argument(s), it takes (prompts, device)"),
    ("ATTENTION", "@classmethod\n    def unavailable_reason(cls, device):\n        return None\n"
                  "    def __call__(self, q, k, v):\n        return q", "its __call__ takes no keyword 'mask'"),
    ("ATTENTION", "def __call__(self, q, k, v, mask=None):\n        return q", "has no method 'unavailable_reason'"),
    ("ATTENTION", "@classmethod\n    def unavailable_reason(cls):\n        return None\n"
                  "    def __call__(self, q, k, v, mask=None):\n        return q",
     "unavailable_reason() is called with 1 positional argument(s), it takes ()"),
    ("ATTENTION", "def __init__(self, block_size):\n        self.block_size = block_size\n"
                  "    @classmethod\n    def unavailable_reason(cls, device):\n        return None\n"
                  "    def __call__(self, q, k, v, mask=None):\n        return q",
     "is built with no arguments, its constructor requires (block_size)"),
    ("METRICS", "def __call__(self, videos):\n        return {}",
     "is called with 2 positional argument(s), its __call__ takes (videos)"),
    ("METRICS", "def score(self, videos, prompts):\n        return {}", "is not callable (no __call__)"),
    ("LOGGERS", "def start(self, run_dir, config, total_steps, start_step=0): pass\n"
                "    def log(self, metrics): pass\n    def close(self): pass",
     "log() is called with 2 positional argument(s), it takes (metrics)"),
    ("LOGGERS", "def start(self, run_dir, config, total_steps, start_step=0): pass\n"
                "    def log(self, step, metrics): pass", "has no method 'close'"),
]


@pytest.mark.parametrize("kind,body,message", BAD_PLUGINS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_PLUGINS)])
def test_a_plugin_breaking_its_kinds_contract_fails_at_registration(kind, body, message):
    import oneforcing.registry as registry
    from oneforcing.errors import RegistryError

    namespace: dict = {}
    exec(f"class BadPlugin:\n    {body}\n", namespace)
    reg = getattr(registry, kind)
    try:
        with pytest.raises(RegistryError, match="breaks the .* contract") as err:
            reg.register("bad_plugin")(namespace["BadPlugin"])
    finally:
        reg.unregister("bad_plugin") if "bad_plugin" in reg and reg.find("bad_plugin").obj is namespace["BadPlugin"] else None
    assert message in str(err.value) and "docs/plugins.md" in str(err.value) and "\n" not in str(err.value)
    assert "bad_plugin" not in reg


def test_a_contract_breaking_entry_point_plugin_is_reported_on_one_line(tmp_path):
    root = make_plugin(tmp_path)
    (root / "acme_critics" / "__init__.py").write_text(textwrap.dedent('''
        from oneforcing.registry import CRITICS

        @CRITICS.register("acme_probe")
        class AcmeProbe:
            def forward(self, x_t, t, text):
                return x_t
    '''))
    proc = run_cli(["list", "critics"], tmp_path, tmp_path)
    assert proc.returncode == 0 and "acme_probe" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "acme" in ln]
    assert lines and "breaks the critics contract: has no method 'denoise'" in lines[0]


def test_a_sampler_returning_a_bare_tensor_is_one_line(tmp_path, capsys, monkeypatch):
    """The contract checks names at registration; what a sampler returns is checked where it is called."""
    from oneforcing.cli import main
    from oneforcing.registry import SAMPLERS

    @SAMPLERS.register("bare_tensor_sampler")
    class BareTensor:
        needs_context = False
        steps = [1000.0]

        def __init__(self, scheduler=None):
            self.scheduler = scheduler

        def __call__(self, model, noise, text, *, rng=None, exit_rng=None, negative_text=None,
                     context=None, on_block=None):
            return noise  # not a Rollout

    monkeypatch.chdir(tmp_path)
    try:
        code = main(["generate", "checkpoint=${assets:toy_student_base}", "prompt=a red ball", "out_dir=videos",
                     "text_encoder={type: umt5, path: '${assets:toy_text_encoder}', max_length: 16}",
                     "vae={type: toy_codec}", "num_frames=3", "height=32", "width=32", "progress=false",
                     "model={type: causal_wan, attention: sdpa}", "sampler={type: bare_tensor_sampler}"])
    finally:
        SAMPLERS.unregister("bare_tensor_sampler")
    err = capsys.readouterr().err.strip()  # the log's info lines go there too
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "sampler: sampler " in err and "BareTensor returned Tensor; a sampler returns a Rollout" in err
    assert not any((tmp_path / "videos").glob("*.mp4"))


def test_a_loss_returning_other_than_a_scalar_and_figures_is_one_line():
    """A plugin loss that returns a float (or a vector, or no figures dict) is stopped where the trainer
    calls it, with one line naming it and the contract, not deep inside backward."""
    import torch

    from oneforcing.errors import UserError
    from oneforcing.trainer.loop import _loss_result

    value, figures = _loss_result("mine", "generator", (torch.tensor(1.0), {"a": 1.0}))
    assert value.item() == 1.0 and figures == {"a": 1.0}
    for bad, got in ((0.5, "returned float"), ((torch.ones(2), {}), "returned (Tensor, dict)"),
                     ((torch.tensor(1.0), [1]), "returned (Tensor, list)")):
        with pytest.raises(UserError, match=f"generator_losses: loss 'mine' {re.escape(got)}; a loss returns"):
            _loss_result("mine", "generator", bad)


def test_a_text_encoder_returning_other_than_an_embedding_is_one_line():
    """What `encode(prompts)` returns is checked where the shard-writing jobs call it."""
    import torch

    from oneforcing.data.pipeline import encode_text
    from oneforcing.errors import UserError

    class Returns:
        def __init__(self, value):
            self.value = value

        def encode(self, prompts):
            return self.value

    embed, mask = encode_text(Returns(torch.ones(2, 3, 4)), ["a", "b"])
    assert embed.shape == (2, 3, 4) and mask.all()
    for value, got in ((["x", "y"], "list"), (torch.ones(2, 4), "a tensor [2, 4]"), (torch.ones(3, 3, 4), "a tensor [3, 3, 4]")):
        with pytest.raises(UserError) as err:
            encode_text(Returns(value), ["a", "b"])
        text = str(err.value)
        assert text.startswith("text_encoder: text encoder ") and f"Returns returned {got} for 2 prompt(s)" in text, text
