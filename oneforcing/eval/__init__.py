"""Evaluation: ToyBench (analytic detectors, a fixed feature map + Fréchet distance, VBench-style
scores) and generated-video I/O in VBench's file layout."""

from oneforcing.eval.detectors import detect
from oneforcing.eval.features import frechet_distance, frechet_to_toy_world, video_features
from oneforcing.eval.io import load_videos, save_videos
from oneforcing.eval.toybench import DIMENSIONS, ToyBench, markdown_header, markdown_row, score_videos

__all__ = ["DIMENSIONS", "ToyBench", "detect", "frechet_distance", "frechet_to_toy_world", "load_videos",
           "markdown_header", "markdown_row", "save_videos", "score_videos", "video_features"]
