"""Prompt schedules: which prompt a video shows from which frame on (`generate`'s `prompt_schedule`).

    prompt_schedule:
      - {frame: 0, prompt: "a large red circle moving right slowly on a black background"}
      - {frame: 40, prompt: "a small blue square moving up quickly on a white background"}
    prompt_switch: recache          # or keep (see oneforcing/streaming/live.py)

`frame` counts output video frames (16 fps), the first entry is frame 0. The generator works in
latent frames and in blocks, so a switch takes effect at the first block that starts at or after
the latent frame holding the requested video frame (Wan's VAE: latent 0 is video frame 0, latent
j >= 1 is video frames 4j-3 .. 4j; the toy codec: latent j is frame j). The manifest records the
frame each switch took effect at. Validation names the dotted key: `prompt_schedule[1].frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

from oneforcing.errors import UserError

SWITCH_MODES = ("recache", "keep")


@dataclass(frozen=True)
class Switch:
    frame: int   # requested video frame
    prompt: str


def parse_schedule(value, num_frames: int) -> list[Switch]:
    """The recipe's list of {frame, prompt} -> switches, strictly increasing from frame 0."""
    key = "prompt_schedule"
    if not isinstance(value, list) or not value:
        raise UserError(f"generate: '{key}' must be a non-empty list of {{frame, prompt}}, got {value!r:.80}",
                        key=key)
    out: list[Switch] = []
    for i, entry in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"frame", "prompt"}:
            raise UserError(f"generate: each entry must be a mapping with exactly 'frame' and 'prompt', "
                            f"got {entry!r:.80}", key=at)
        frame, prompt = entry["frame"], entry["prompt"]
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise UserError(f"generate: frame must be an integer >= 0, got {frame!r:.40}", key=f"{at}.frame")
        if i == 0 and frame != 0:
            raise UserError(f"generate: the first entry sets the opening prompt: frame must be 0, got {frame}",
                            key=f"{at}.frame")
        if out and frame <= out[-1].frame:
            raise UserError(f"generate: frames must increase, got {frame} after {out[-1].frame}", key=f"{at}.frame")
        if frame >= num_frames:
            raise UserError(f"generate: frame {frame} is past the video's last frame ({num_frames - 1})",
                            key=f"{at}.frame")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"generate: prompt must be a non-empty string, got {prompt!r:.40}", key=f"{at}.prompt")
        out.append(Switch(frame, prompt.strip()))
    return out


def check_switch_mode(mode: str) -> str:
    if mode not in SWITCH_MODES:
        raise UserError(f"generate: prompt_switch must be one of {', '.join(SWITCH_MODES)}, got {mode!r:.40}",
                        key="prompt_switch")
    return mode


def latent_frame(video_frame: int, temporal_factor: int) -> int:
    """The latent frame that decodes to `video_frame` (a causal VAE: latent 0 is frame 0 alone)."""
    return 0 if video_frame == 0 else (video_frame - 1) // temporal_factor + 1


def first_video_frame(latent: int, temporal_factor: int) -> int:
    return 0 if latent == 0 else (latent - 1) * temporal_factor + 1


def block_starts(switches: list[Switch], blocks: list[tuple[int, int]], temporal_factor: int) -> list[int]:
    """The latent frame (a block start) each switch takes effect at; two switches in one block are
    refused (the second would never be seen)."""
    starts = [a for a, _ in blocks]
    out: list[int] = []
    for i, sw in enumerate(switches):
        lat = latent_frame(sw.frame, temporal_factor)
        start = next((a for a in starts if a >= lat), None)
        if start is None:
            raise UserError(f"generate: frame {sw.frame} is in the last block: a switch there would show no "
                            "frame", key=f"prompt_schedule[{i}].frame")
        if out and start == out[-1]:
            raise UserError(f"generate: frame {sw.frame} takes effect at the same block as the switch before it "
                            f"(latent frame {start}): space switches at least one block apart",
                            key=f"prompt_schedule[{i}].frame")
        out.append(start)
    return out


@dataclass(frozen=True)
class PlannedSchedule:
    """A schedule placed on a clip's blocks: `starts[i]` is the latent frame switch i takes effect at."""
    switches: list[Switch]
    starts: list[int]
    mode: str
    temporal_factor: int

    def manifest(self) -> dict:
        return {"prompt_switch": self.mode, "prompt_schedule": [
            {"frame": sw.frame, "prompt": sw.prompt, "effective_frame": first_video_frame(s, self.temporal_factor)}
            for sw, s in zip(self.switches, self.starts)]}
