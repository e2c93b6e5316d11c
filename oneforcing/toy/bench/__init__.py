"""ToyBench: analytic detectors, a fixed feature map + Fréchet distance, VBench-style scores."""

from oneforcing.toy.bench.detectors import detect
from oneforcing.toy.bench.features import frechet_distance, frechet_to_toy_world, video_features
from oneforcing.toy.bench.toybench import DIMENSIONS, ToyBench, markdown_header, markdown_row, score_videos

__all__ = ["DIMENSIONS", "ToyBench", "detect", "frechet_distance", "frechet_to_toy_world",
           "markdown_header", "markdown_row", "score_videos", "video_features"]
