"""Files shipped in the package's assets folder, named for code as `${assets:NAME}` names them for
recipes (config/recipe.py). The core names the toy world's assets here instead of importing the
toy package (oneforcing/toy/), which builds them."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def packaged_asset(name: str) -> Path:
    """The path of `name` in the assets folder (it may not exist: callers say what is missing)."""
    return ASSETS / name


# The toy text encoder (built by oneforcing/toy/text_encoder.py): the default of the jobs that
# encode prompts. 32 tokens: the longest toy prompt is 21 words + </s>.
TOY_TEXT_ENCODER = {"type": "umt5", "path": str(packaged_asset("toy_text_encoder")), "max_length": 32}
