"""The real path end to end on CPU ranks, by changing only paths and sizes: the README's "Real
runs" chain,

    prepare-data -> causal_forcing_ar_diffusion -> causal_forcing_ode_pairs
                 -> causal_forcing_ode_init -> one_forcing_framewise -> generate

in bf16 on 2 CPU ranks (gloo), with folders in the exact Wan2.1-T2V-1.3B-Diffusers and
Wan2.1-T2V-14B-Diffusers layout: real widths and configs, random weights, `--layers` transformer
blocks and one UMT5 layer (oneforcing/testing/real_layout.py; the 14B folder's text encoder,
tokenizer and VAE are symlinks to the 1.3B's, which are the same files in the released repos).

    python benchmarks/real_chain.py [--work DIR] [--layers 1] [--ranks 2] [--narrow]

Each stage is the README's command, launched with torchrun instead of deepspeed, with WAN_1_3B /
WAN_14B set and only what makes it fit a CPU overridden (STAGES below: 64x64 pixels and 9 frames ->
3 latent frames of 8x8, 4 clips, 8 ODE steps, 2 training iterations, critic registers on the
blocks that exist). Every stage must exit 0; the script prints each stage's wall time and checks
what it wrote. `--narrow` runs the same commands on narrow folders of the same layout (2 heads,
a 64-wide UMT5, a base_dim-8 VAE; real_layout.NARROW): the test suite's copy of this chain
(tests/test_benchmarks.py), so that a renamed recipe or key can never break the real path unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VAE = '{type: wan_vae, path: $WAN_1_3B}'
TEXT = '{type: umt5, path: $WAN_1_3B}'


def stages(layers: int, narrow: bool = False) -> list[tuple[str, str]]:
    """(name, shell command run from the work folder); README commands plus size overrides."""
    registers = list(range(layers)) if layers < 2 else [0, layers - 1]
    critic = "models.critic.heads=2 models.critic.ffn_dim=64 " if narrow else ""  # the recipe's 12 heads: real width
    train = "steps=2 checkpoint_every=1000"
    return [
        ("prepare-data", f"$LAUNCH -m oneforcing.cli prepare-data videos=videos/ captions=videos/captions.csv "
                         f"out=data/wan_latents vae=\"{VAE}\" text_encoder=\"{TEXT}\" "
                         "height=64 width=64 frames=9 examples_per_shard=2 batch_size=2 progress=false"),
        ("causal_forcing_ar_diffusion", f"$LAUNCH recipes/run.py recipes/causal_forcing_ar_diffusion.yaml {train}"),
        ("causal_forcing_ode_pairs", "$LAUNCH recipes/run.py recipes/causal_forcing_ode_pairs.yaml dtype=bfloat16 "
                                     "sampler.num_steps=8 sampler.keep_indices=[0,2,4,6] progress=false"),
        ("causal_forcing_ode_init", f"$LAUNCH recipes/run.py recipes/causal_forcing_ode_init.yaml {train}"),
        ("one_forcing_framewise", f"$LAUNCH recipes/run.py recipes/one_forcing_framewise.yaml {train} "
                                  f"generator_every=1 models.critic.layers={registers} {critic}"
                                  "sampler.grad_frames=2 ema.start_step=0"),
        ("generate", "$LAUNCH -m oneforcing.cli generate checkpoint=runs/one_forcing_framewise/export "
                     f"prompts_file=prompts.txt text_encoder=\"{TEXT}\" vae=\"{VAE}\" "
                     "filename='\"{prompt}-{index}.mp4\"' samples_per_prompt=1 out_dir=vbench/ "
                     "num_frames=9 height=64 width=64 dtype=bfloat16 progress=false"),
    ]


def build_inputs(work: Path, layers: int, clips: int = 4, narrow: bool = False) -> list[str]:
    """The two Wan folders, 64x64 toy-world clips with a captions CSV, and prompts.txt."""
    import torch.nn.functional as F

    from oneforcing.toy.world import ToyWorld
    from oneforcing.data.videos import write_video
    from oneforcing.testing.real_layout import FOLDER, save_real_layout
    from oneforcing.testing.tiny_encoders import DEFAULT_WORDS

    world = ToyWorld("train", clips, frames=9)
    prompts = world.prompts()[:clips]
    words = sorted(set(DEFAULT_WORDS) | {w for p in prompts for w in p.lower().split()})
    small = save_real_layout(work / "checkpoints", "1.3B", layers=layers, words=words, narrow=narrow)
    big = save_real_layout(work / "checkpoints", "14B", layers=1, words=words, transformer_only=True, narrow=narrow)
    for sub in ("text_encoder", "tokenizer", "vae"):
        (big / sub).symlink_to(small / sub)
    (work / "videos").mkdir(parents=True)
    lines = ["video,caption"]
    for i, video in enumerate(world.render(range(clips))):
        write_video(work / "videos" / f"clip{i}.mp4", F.interpolate(video, scale_factor=2, mode="nearest"))
        lines.append(f'clip{i}.mp4,"{prompts[i]}"')
    (work / "videos" / "captions.csv").write_text("\n".join(lines) + "\n")
    (work / "prompts.txt").write_text("\n".join(prompts[:2]) + "\n")
    for name in ("recipes", "oneforcing"):
        (work / name).symlink_to(ROOT / name)
    return [str(work / "checkpoints" / FOLDER[s]) for s in ("1.3B", "14B")]


def check_outputs(work: Path) -> list[str]:
    notes = []
    for folder in ("data/wan_latents", "data/cf_ode_pairs"):
        index = json.loads((work / folder / "index.json").read_text())
        notes.append(f"{folder}: {index.get('num_examples', '?')} examples")
    for run in ("causal_forcing_ar_diffusion", "causal_forcing_ode_init", "one_forcing_framewise"):
        export = work / "runs" / run / "export"
        assert (export / "generator" / "config.json").is_file(), f"{export}/generator was not written"
        notes.append(f"runs/{run}/export: {sorted(p.name for p in export.iterdir())}")
    videos = sorted((work / "vbench").glob("*.mp4"))
    assert videos, "generate wrote no video"
    notes.append(f"vbench/: {[v.name for v in videos]}")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="empty folder to build and run in (default: a temp dir)")
    parser.add_argument("--layers", type=int, default=1, help="transformer blocks of the 1.3B-width models")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--narrow", action="store_true", help="narrow folders of the same layout (the test suite's run)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="of-real-chain-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wan_1_3b, wan_14b = build_inputs(work, args.layers, narrow=args.narrow)
    times = {"build folders and clips": time.perf_counter() - t0}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "WAN_1_3B": wan_1_3b, "WAN_14B": wan_14b, "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "LAUNCH": f"{torchrun} --nproc_per_node {args.ranks} --master_port {port}"}
    for name, command in stages(args.layers, args.narrow):
        print(f"== {name}: {command}", flush=True)
        t = time.perf_counter()
        with open(work / f"{name}.log", "w") as log:
            code = subprocess.run(["bash", "-c", command], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        times[name] = time.perf_counter() - t
        if code != 0:
            tail = (work / f"{name}.log").read_text().splitlines()[-25:]
            print("\n".join(tail))
            print(f"FAILED: {name} exited {code} after {times[name]:.0f} s (log: {work / name}.log)")
            return 1
        print(f"   ok in {times[name]:.0f} s", flush=True)
    for note in check_outputs(work):
        print("  ", note)
    print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {sum(times.values()) / 60:.1f} min (work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
