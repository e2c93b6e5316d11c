"""The toy world: procedural videos of one or two moving shapes with exact, parseable semantics.

Every scene is drawn from its own `random.Random`, seeded from (seed, split, index), so an example
is the same whatever batch or rank renders it, and the splits never share a seed. A scene is a
background colour plus one or two objects, each with a shape, colour, size, direction and speed;
its prompt follows a closed grammar (see `PROMPT_GRAMMAR`) that `parse_prompt` turns back into the
attributes, which is what ToyBench scores against. Two objects move along the same axis in
disjoint lanes, so they never occlude each other and each stays whole inside the frame.

Held-out combinations: the (colour, shape) pairs in `HELDOUT_PAIRS` never appear in the train,
validation or test splits; the "heldout" split puts one in every scene (compositional test).
"""

from __future__ import annotations

import hashlib
import math
import random
import re

import torch

from oneforcing.errors import UserError
from oneforcing.registry import DATASETS

# Pure, saturated colours: every pair is >= 1.0 apart in RGB, and >= 0.87 from every background.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
# Half-extent in pixels at the reference size of 32 px (scaled with the frame size).
SIZES: dict[str, float] = {"small": 3.0, "large": 5.0}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Pixels per frame at the reference 32 px / 21 frames (scaled so the total travel is the same).
SPEEDS: dict[str, float] = {"slowly": 0.5, "quickly": 1.0}
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "circle")})
SPLITS = ("train", "validation", "test", "heldout")
REF_SIZE, REF_FRAMES = 32, 21

_OBJ = (rf"a (?P<size{{i}}>{'|'.join(SIZES)}) (?P<colour{{i}}>{'|'.join(COLOURS)}) "
        rf"(?P<shape{{i}}>{'|'.join(SHAPES)}) moving (?P<direction{{i}}>{'|'.join(DIRECTIONS)}) "
        rf"(?P<speed{{i}}>{'|'.join(SPEEDS)})")
PROMPT_GRAMMAR = (
    "PROMPT := OBJECT [' and ' OBJECT] ' on a ' BACKGROUND ' background'\n"
    "OBJECT := 'a ' SIZE ' ' COLOUR ' ' SHAPE ' moving ' DIRECTION ' ' SPEED"
)
_PROMPT_RE = re.compile(
    "^" + _OBJ.format(i=0) + "(?: and " + _OBJ.format(i=1) + ")?"
    + rf" on a (?P<background>{'|'.join(BACKGROUNDS)}) background$"
)
VOCABULARY = sorted({"a", "and", "on", "background", "moving", *COLOURS, *BACKGROUNDS, *SHAPES,
                     *SIZES, *DIRECTIONS, *SPEEDS})


def example_seed(seed: int, split: str, index: int) -> int:
    """The 63-bit seed of one example; different splits hash different strings (disjoint seeds)."""
    digest = hashlib.sha256(f"toy_world:{seed}:{split}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def scale_factors(frames: int, size: int) -> tuple[float, float]:
    """(length scale, speed scale): objects scale with the frame; the total travel is fixed."""
    length = size / REF_SIZE
    return length, length * (REF_FRAMES - 1) / max(frames - 1, 1)


def make_prompt(scene: dict) -> str:
    parts = [f"a {o['size']} {o['colour']} {o['shape']} moving {o['direction']} {o['speed']}"
             for o in scene["objects"]]
    return " and ".join(parts) + f" on a {scene['background']} background"


def parse_prompt(prompt: str) -> dict:
    """Prompt -> {"background", "objects": [{size, colour, shape, direction, speed}, ...]}."""
    m = _PROMPT_RE.match(prompt.strip().lower())
    if m is None:
        raise UserError(f"prompt is not in the toy-world grammar: {prompt!r}")
    g = m.groupdict()
    objects = [{k: g[f"{k}{i}"] for k in ("size", "colour", "shape", "direction", "speed")}
               for i in (0, 1) if g[f"shape{i}"] is not None]
    return {"background": g["background"], "objects": objects}


def _sample_object(rng: random.Random, split: str, forced_heldout: bool, taken: set[str]) -> dict:
    """Draw one object's categorical attributes, honouring the held-out (colour, shape) pairs."""
    while True:
        colour, shape = rng.choice(sorted(set(COLOURS) - taken)), rng.choice(SHAPES)
        heldout = (colour, shape) in HELDOUT_PAIRS
        if heldout == forced_heldout:
            break
    return {"shape": shape, "colour": colour, "size": rng.choice(sorted(SIZES)),
            "direction": rng.choice(sorted(DIRECTIONS)), "speed": rng.choice(sorted(SPEEDS))}


def object_geometry(obj: dict, lane: tuple[float, float], frames: int, size: int):
    """(radius, velocity, along range, across range) of an object in a lane: its start is uniform
    on the two ranges (`place_start` maps a draw to pixels); the margin keeps the anti-aliased rim
    inside the lane and the whole path inside the frame."""
    length, speed_scale = scale_factors(frames, size)
    r = SIZES[obj["size"]] * length
    v = SPEEDS[obj["speed"]] * speed_scale
    dx, dy = DIRECTIONS[obj["direction"]]
    margin = r + 0.75 * length
    lo, hi = lane
    return r, [dx * v, dy * v], (margin, size - margin - v * (frames - 1)), (lo + margin, hi - margin)


def start_bins(lo: float, hi: float, n: int) -> list[float]:
    """The `n` discrete starts of a range: midpoints of n equal bins (one point for a tiny range)."""
    n = 1 if hi - lo < 1e-9 else n
    return [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]


def snap_start(value: float, lo: float, hi: float, n: int) -> float:
    """A uniform draw on [lo, hi] -> the midpoint of its bin of n (`start_positions`)."""
    points = start_bins(lo, hi, n)
    i = 0 if len(points) == 1 else min(int((value - lo) / (hi - lo) * n), n - 1)
    return points[i]


def place_start(direction: str, along: float, across: float, size: int) -> tuple[float, float]:
    """A start drawn on `object_geometry`'s ranges -> (x, y); left/up movers start on the far side."""
    dx, dy = DIRECTIONS[direction]
    if dx + dy < 0:
        along = size - along
    return (along, across) if dx else (across, along)


def sample_scene(seed: int, split: str, index: int, frames: int = REF_FRAMES, size: int = REF_SIZE,
                 max_objects: int = 2, start_positions: int | None = None) -> dict:
    """The attributes and geometry of one example (pure function of its arguments).

    `start_positions` n: each start coordinate takes one of n values (the midpoints of n equal bins
    of its range) instead of any value: the same draws, snapped, so the prompts do not change. A
    prompt then has n^2 videos per object (a simpler tier of the world, docs/toy_world.md)."""
    if split not in SPLITS:
        raise UserError(f"unknown toy-world split {split!r}; one of {', '.join(SPLITS)}")
    rng = random.Random(example_seed(seed, split, index))
    count = rng.randint(1, max_objects)
    objects: list[dict] = []
    for k in range(count):
        forced = split == "heldout" and k == 0
        objects.append(_sample_object(rng, split, forced, {o["colour"] for o in objects}))
    if count == 2:  # both move along one axis; lanes split the other axis in halves
        horizontal = rng.random() < 0.5
        for o in objects:
            o["direction"] = rng.choice(["left", "right"] if horizontal else ["up", "down"])
        lanes = [(0.0, size / 2), (size / 2, float(size))]
        rng.shuffle(lanes)
    else:
        lanes = [(0.0, float(size))]
    for o, lane in zip(objects, lanes):
        r, velocity, along_range, across_range = object_geometry(o, lane, frames, size)
        across = rng.uniform(*across_range)
        along = rng.uniform(*along_range)
        if start_positions is not None:
            across, along = snap_start(across, *across_range, start_positions), snap_start(along, *along_range, start_positions)
        start = place_start(o["direction"], along, across, size)
        o.update(radius=r, start=[round(start[0], 4), round(start[1], 4)], velocity=velocity)
    scene = {"background": rng.choice(sorted(BACKGROUNDS)), "objects": objects, "frames": frames,
             "size": size, "seed": seed, "split": split, "index": index}
    scene["prompt"] = make_prompt(scene)
    return scene


_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def render_scenes(scenes: list[dict], quantize: bool = True) -> torch.Tensor:
    """Scenes -> videos [N, T, 3, H, W] in [-1, 1], anti-aliased from signed distances.

    Coverage = clamp(0.5 - sdf, 0, 1) gives sub-pixel motion without staircase jumps. With
    `quantize` the colours are rounded to 8 bits, like decoded real video."""
    n, frames, size = len(scenes), scenes[0]["frames"], scenes[0]["size"]
    k_max = max(len(s["objects"]) for s in scenes)
    start = torch.zeros(n, k_max, 2)
    vel = torch.zeros(n, k_max, 2)
    radius = torch.ones(n, k_max)
    shape = torch.zeros(n, k_max, dtype=torch.long)
    colour = torch.zeros(n, k_max, 3)
    present = torch.zeros(n, k_max)
    bg = torch.tensor([BACKGROUNDS[s["background"]] for s in scenes])
    for i, s in enumerate(scenes):
        if (s["frames"], s["size"]) != (frames, size):
            raise ValueError("render_scenes needs scenes of one frame count and size")
        for k, o in enumerate(s["objects"]):
            start[i, k] = torch.tensor(o["start"])
            vel[i, k] = torch.tensor(o["velocity"])
            radius[i, k] = o["radius"]
            shape[i, k] = _SHAPE_ID[o["shape"]]
            colour[i, k] = torch.tensor(COLOURS[o["colour"]])
            present[i, k] = 1.0
    t = torch.arange(frames, dtype=torch.float32)
    centre = start[:, :, None, :] + vel[:, :, None, :] * t[None, None, :, None]  # [N, K, T, 2]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, 1, 1, size) - centre[..., 0, None, None]          # [N, K, T, 1, W]
    dy = coords.view(1, 1, 1, size, 1) - centre[..., 1, None, None]          # [N, K, T, H, 1]
    r = radius[:, :, None, None, None]
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - r
    # Apex up at (0, -r), base y = +r: intersection of three half-planes.
    s5 = math.sqrt(5.0)
    triangle = torch.maximum(torch.maximum((-2 * dx - dy - r) / s5, (2 * dx - dy - r) / s5), dy - r)
    sid = shape[:, :, None, None, None]
    sdf = torch.where(sid == 0, circle, torch.where(sid == 1, square, triangle))
    alpha = (0.5 - sdf).clamp(0, 1) * present[:, :, None, None, None]        # [N, K, T, H, W]
    video = bg[:, None, :, None, None].expand(n, frames, 3, size, size).clone()
    for k in range(k_max):
        a = alpha[:, k, :, None]                                              # [N, T, 1, H, W]
        video = video * (1 - a) + colour[:, k, None, :, None, None] * a
    if quantize:
        video = torch.round(video * 255) / 255
    return video * 2 - 1


@DATASETS.register("toy_world")
class ToyWorld:
    """Indexable toy-world split: item i = {"video" [T, 3, H, W] in [-1, 1], "prompt", "metadata", "index"}.

    `prompts()` lists every prompt without rendering (a prompt list for self-forcing training)."""

    def __init__(self, split: str = "train", num_examples: int = 1024, seed: int = 0,
                 frames: int = REF_FRAMES, size: int = REF_SIZE, max_objects: int = 2,
                 start_positions: int | None = None):
        if split not in SPLITS:
            raise UserError(f"toy_world: unknown split {split!r}; one of {', '.join(SPLITS)}")
        if max_objects not in (1, 2):
            raise UserError(f"toy_world: max_objects must be 1 or 2, got {max_objects}")
        if size % 4 or size < 16 or frames < 2 or num_examples < 1:
            raise UserError(f"toy_world: need size a multiple of 4 and >= 16, frames >= 2, "
                            f"num_examples >= 1; got size={size}, frames={frames}, num_examples={num_examples}")
        self.split, self.num_examples, self.seed = split, num_examples, seed
        if start_positions is not None and start_positions < 1:
            raise UserError(f"toy_world: start_positions must be >= 1 (or null: any start), got {start_positions}")
        self.frames, self.size, self.max_objects = frames, size, max_objects
        self.start_positions = start_positions

    def __len__(self) -> int:
        return self.num_examples

    def scene(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        return sample_scene(self.seed, self.split, index, self.frames, self.size, self.max_objects,
                            self.start_positions)

    def scenes(self, indices) -> list[dict]:
        return [self.scene(int(i)) for i in indices]

    def prompts(self) -> list[str]:
        return [self.scene(i)["prompt"] for i in range(self.num_examples)]

    def render(self, indices) -> torch.Tensor:
        return render_scenes(self.scenes(indices))

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        return {"video": render_scenes([scene])[0], "prompt": scene["prompt"], "metadata": scene,
                "index": index}

    def __iter__(self):
        for i in range(self.num_examples):
            yield self[i]


def scene_from_prompt(prompt: str, frames: int = REF_FRAMES, size: int = REF_SIZE) -> dict:
    """A canonical scene for a prompt: its attributes, each object's path centred in its lane.
    ToyBench renders it as the reference for edge energy (which does not depend on position)."""
    parsed = parse_prompt(prompt)
    objects = [dict(o) for o in parsed["objects"]]
    length, speed_scale = scale_factors(frames, size)
    lanes = [(0.0, size / 2), (size / 2, float(size))] if len(objects) == 2 else [(0.0, float(size))]
    for o, (lo, hi) in zip(objects, lanes):
        dx, dy = DIRECTIONS[o["direction"]]
        v = SPEEDS[o["speed"]] * speed_scale
        along = size / 2 - (dx + dy) * v * (frames - 1) / 2
        across = (lo + hi) / 2
        start = (along, across) if dx else (across, along)
        o.update(radius=SIZES[o["size"]] * length, start=list(start), velocity=[dx * v, dy * v])
    return {"background": parsed["background"], "objects": objects, "frames": frames, "size": size,
            "prompt": prompt}

