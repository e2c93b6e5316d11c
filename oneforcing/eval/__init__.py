"""Evaluation helpers of the core: generated-video I/O in VBench's file layout and the teacher
ODE's curvature statistics. ToyBench is the toy world's (oneforcing/toy/bench/)."""

from oneforcing.eval.io import load_videos, save_videos

__all__ = ["load_videos", "save_videos"]
