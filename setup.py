from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="oneforcing",
    version="0.1.0",
    description="Distil video diffusion models into one-step causal (streaming) video generators.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["oneforcing", "oneforcing.*"]),
    include_package_data=True,
    package_data={"oneforcing": ["assets/**/*", "recipes/**/*.yaml", "study/*.html", "serve/*.html"]},
    install_requires=[
        # Install torch first (`pip install torch==2.13.0`): a bare requirement would pull a CUDA build.
        "torch>=2.5",
        "diffusers>=0.42,<0.43",
        "transformers>=5,<6",
        "peft>=0.17",
        "deepspeed>=0.19,<0.20",
        "pyyaml>=6",
        "einops>=0.8",
        "wandb>=0.19",
        "safetensors>=0.4",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "sentencepiece>=0.2",
    ],
    extras_require={
        "flash": ["flash-attn>=2.6"],
        # `oneforcing study`, the pairwise preference-study web app
        "study": ["fastapi>=0.115", "uvicorn>=0.30"],
        # httpx: FastAPI's TestClient; selenium drives the system's chromium in tests/test_study_browser.py
        # (it never downloads a browser). `make install` installs .[dev,study].
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "httpx>=0.27", "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["oneforcing=oneforcing.cli:entry"]},
)
