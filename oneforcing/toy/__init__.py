"""The toy world: the CPU testbed of the Wan distillation core, in its own package that the core
never imports (tests/test_layers.py). A scene grammar rendered to small videos (world), a linear
stand-in for the Wan VAE (codec), a tiny UMT5 asset (text_encoder), the exact teacher
(analytic_teacher), ToyBench (bench/) and the toy jobs (jobs/: toy_data, toy_eval, eval,
toy_report). Importing the package registers all of them; registry/plugins.py imports it with
the built-in packages, so recipes name them as before."""

from oneforcing.toy import bench, jobs  # noqa: F401  (registers ToyBench and the toy jobs)
from oneforcing.toy.analytic_teacher import ToyAnalyticTeacher
from oneforcing.toy.codec import ToyCodec
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.toy.world import ToyWorld, parse_prompt, render_scenes, sample_scene

__all__ = ["TOY_MAX_LENGTH", "TOY_TEXT_ENCODER_PATH", "ToyAnalyticTeacher", "ToyCodec", "ToyWorld",
           "parse_prompt", "render_scenes", "sample_scene"]
