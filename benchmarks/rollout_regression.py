"""A diagnostic loss for the toy world's one-object tier (docs/toy_world.md, item 9): MSE between the
generator's own rollout and the batch's clean latents.

Where a prompt fixes its video (the one-object tier, `start_positions: 1`) this is DMD's gradient
with BOTH scores exact: the real score's x0 is the video, and an exact fake score of a generator that
has learned to ignore its noise returns the generator's own output, so (fake - real) = (rollout -
video). It asks whether the objective or the generator is the limit. Not a method: registered only
when a recipe imports this module (`imports: [benchmarks.rollout_regression]`, run from the
repository root with PYTHONPATH=.), as benchmarks/rollout_regression.yaml does.
"""

import torch

from oneforcing.losses.common import figure, frame_select
from oneforcing.registry import LOSSES


@LOSSES.register("rollout_regression")
class RolloutRegression:
    """`{type: rollout_regression}`: mean squared error of the rollout's gradient frames to `latents`."""

    def __call__(self, s):
        rollout = s.rollout()
        x = frame_select(rollout.x0.float(), rollout.frame_mask)
        video = s.batch.require("latents", "rollout_regression", "use a latent_shards dataset").to(x.device)
        loss = torch.mean((x - frame_select(video.float(), rollout.frame_mask)) ** 2)
        return loss, {"mse": figure(loss)}
