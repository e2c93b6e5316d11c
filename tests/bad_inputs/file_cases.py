"""Bad files: checkpoints, shard folders, output folders, weights, videos (see common.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from bad_inputs.common import TOY_TEXT, case, copy, generate, toy_data, train


# --- resuming: the `latest` pointer and damaged checkpoints ----------------------------------
@case("latest_names_missing_checkpoint", r"latest: names checkpoint .*step_00000006, which is missing")
def _(w):
    run = w.checkpointed_run()
    (run / "checkpoints/latest").write_text(json.dumps({"checkpoint": "step_00000006", "step": 6}))
    return train()


@case("latest_escapes_its_folder", r"not a step_NNNNNNNN folder inside")
def _(w):
    run = w.checkpointed_run()
    w.checkpointed_run("other")
    (run / "checkpoints/latest").write_text(
        json.dumps({"checkpoint": "../../other/checkpoints/step_00000004", "step": 4}))
    return train()


@case("latest_unreadable", r"latest: unreadable checkpoint pointer")
def _(w):
    run = w.checkpointed_run()
    (run / "checkpoints/latest").write_text("{\"checkp")
    return train()


@case("latest_names_a_file_not_a_checkpoint", r"latest: names checkpoint .*step_00000003, which is missing or incomplete")
def _(w):
    run = w.checkpointed_run()
    (run / "checkpoints/step_00000003").write_text("not a folder")
    (run / "checkpoints/latest").write_text(json.dumps({"checkpoint": "step_00000003", "step": 3}))
    return train()


@case("resume_from_nowhere", r"resume: '/nonexistent/ckpt' is not a complete oneforcing checkpoint")
def _(w):
    return train("resume=/nonexistent/ckpt")


@case("resume_garbage_meta", r"meta\.json: unreadable checkpoint metadata")
def _(w):
    run = w.checkpointed_run()
    (run / "checkpoints/step_00000004/meta.json").write_text("\x00garbage{")
    return train()


@case("resume_foreign_meta", r"meta\.json: format 'something-else'")
def _(w):
    run = w.checkpointed_run()
    (run / "checkpoints/step_00000004/meta.json").write_text(json.dumps({"format": "something-else"}))
    return train()


@case("resume_truncated_tensor_file", r"rank0/generator\.safetensors: unreadable tensor file")
def _(w):
    f = w.checkpointed_run() / "checkpoints/step_00000004/rank0/generator.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    return train()


@case("resume_skeleton_not_json", r"rank0/ema\.json: unreadable state")
def _(w):
    (w.checkpointed_run() / "checkpoints/step_00000004/rank0/ema.json").write_text("{oops")
    return train()


@case("resume_skeleton_names_missing_tensor", r"rank0/trainer\.json: state does not match trainer\.safetensors")
def _(w):
    (w.checkpointed_run() / "checkpoints/step_00000004/rank0/trainer.json").write_text(
        json.dumps({"step": {"__tensor__": "t404"}}))
    return train()


@case("resume_differently_sized_model", r"trained with different models \(models\.generator\.config\.num_layers\)")
def _(w):
    run = w.checkpointed_run()
    meta_file = run / "checkpoints/step_00000004/meta.json"
    meta = json.loads(meta_file.read_text())
    meta["recipe"]["models"]["generator"]["config"]["num_layers"] = 3
    meta_file.write_text(json.dumps(meta))
    return train()


@case("resume_other_world_size", r"was written by 2 ranks; this run has 1")
def _(w):
    meta_file = w.checkpointed_run() / "checkpoints/step_00000004/meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "world_size": 2}))
    return train()


@case("resume_checkpoint_without_ema", r"has no state for ema")
def _(w):
    meta_file = w.checkpointed_run() / "checkpoints/step_00000004/meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "states": ["generator", "trainer"]}))
    return train()


# --- prompt files (prompt_list, the data-free DMD recipes) -------------------------------------
def prompt_list(path: str) -> str:
    return ("data={type: prompt_list, path: " + path + ", latent_shape: [3, 4, 4, 4], "
            "text_encoder: {type: umt5, path: '${assets:toy_text_encoder}', max_length: 16}}")


@case("prompt_file_missing", r"data\.path: 'no_prompts\.txt' does not exist")
def _(w):
    return train(prompt_list("no_prompts.txt"))


@case("prompt_file_empty", r"data\.path: .*prompts\.txt: holds no prompts")
def _(w):
    (w.root / "prompts.txt").write_text("")
    return train(prompt_list("prompts.txt"))


@case("prompt_file_empty_line", r"data\.path: .*prompts\.txt:2: empty line")
def _(w):
    (w.root / "prompts.txt").write_text("a red ball moving left\n\na blue square\n")
    return train(prompt_list("prompts.txt"))


# --- shard folders ---------------------------------------------------------------------------
def bad_index(w, change) -> list[str]:
    shards = copy(w.shards, w.root / "shards")
    index = json.loads((shards / "index.json").read_text())
    (shards / "index.json").write_text(json.dumps(change(index)))
    return train("data={type: latent_shards, path: shards}")


@case("index_without_fields", r"index\.json: 'fields' must map each field")
def _(w):
    return bad_index(w, lambda ix: {k: v for k, v in ix.items() if k != "fields"})


@case("index_without_shards", r"index\.json: 'shards' must be a non-empty list")
def _(w):
    return bad_index(w, lambda ix: {k: v for k, v in ix.items() if k != "shards"})


@case("index_is_a_list", r"index\.json: not a oneforcing\.shards v1 index")
def _(w):
    return bad_index(w, lambda ix: [ix])


@case("index_shard_escapes_folder", r"shards\[0\]\.file '\.\./shards/shard-00000\.safetensors' is not a plain file name")
def _(w):
    return bad_index(w, lambda ix: {**ix, "shards": [{**ix["shards"][0], "file": "../shards/shard-00000.safetensors"},
                                                     *ix["shards"][1:]]})


@case("index_shard_absolute_path", r"is not a plain file name")
def _(w):
    return bad_index(w, lambda ix: {**ix, "shards": [{**ix["shards"][0], "file": "/etc/passwd"}]})


@case("index_num_examples_not_int", r"shards\[1\] must be \{file, num_examples")
def _(w):
    return bad_index(w, lambda ix: {**ix, "shards": [ix["shards"][0], {**ix["shards"][1], "num_examples": "2"}]})


@case("index_int_latents", r"field 'latent' is int64; it must be floating")
def _(w):
    return bad_index(w, lambda ix: {**ix, "fields": {**ix["fields"], "latent": {**ix["fields"]["latent"],
                                                                                 "dtype": "int64"}}})


@case("index_not_json", r"index\.json: invalid JSON")
def _(w):
    shards = copy(w.shards, w.root / "shards")
    (shards / "index.json").write_text("{\"format\": ")
    return train("data={type: latent_shards, path: shards}")


@case("shard_file_truncated", r"shard-00001\.safetensors: not a readable safetensors shard")
def _(w):
    shards = copy(w.shards, w.root / "shards")
    f = shards / "shard-00001.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return train("data={type: latent_shards, path: shards}")


@case("shard_folder_missing", r"data\.path: 'no_shards' does not exist")
def _(w):
    return train("data={type: latent_shards, path: no_shards}")


# --- folders a job writes: claimed only when safe ---------------------------------------------
@case("overwrite_model_folder", r"out: folder is not empty and has no job\.json")
def _(w):
    out = copy(w.wan, w.root / "out")  # a model: diffusion_pytorch_model.safetensors + config.json
    return toy_data(w, "overwrite=true")


@case("foreign_folder_without_overwrite", r"out: folder is not empty and has no job\.json")
def _(w):
    (w.root / "out").mkdir()
    (w.root / "out" / "notes.txt").write_text("mine")
    return toy_data(w)


@case("job_json_lists_a_path_outside", r"job\.json: 'files' entry '\.\./victim\.txt' is not a plain file name")
def _(w):
    out = copy(w.shards, w.root / "out")
    record = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps({**record, "files": ["../victim.txt"]}))
    (w.root / "victim.txt").write_text("keep me")
    return toy_data(w, "overwrite=true")


@case("job_json_without_file_list", r"lists no 'files' this job wrote")
def _(w):
    out = copy(w.shards, w.root / "out")
    record = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    return toy_data(w, "overwrite=true")


@case("shards_of_other_settings", r"job\.json: 'out' holds a toy_data run with other settings \(num_examples\)")
def _(w):
    copy(w.shards, w.root / "out")
    return toy_data(w, "num_examples=6")


@case("toy_data_text_encoder_missing", r"text_encoder")
def _(w):
    return toy_data(w, "text_encoder={type: umt5, path: no_encoder}")


@case("text_encoder_config_not_json", r"text_encoder: building text_encoder 'umt5' failed: OSError: .*config\.json")
def _(w):
    enc = copy(Path(w.toy_text_encoder), w.root / "enc")
    (enc / "text_encoder" / "config.json").write_text("{ not json")
    return toy_data(w, "text_encoder={type: umt5, path: enc, max_length: 16}")


@case("text_encoder_pickle_weights_only", r"text_encoder: .*safetensors")
def _(w):
    enc = copy(Path(w.toy_text_encoder), w.root / "enc")
    weights = enc / "text_encoder" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), enc / "text_encoder" / "pytorch_model.bin")  # a pickle
    weights.unlink()
    return toy_data(w, "text_encoder={type: umt5, path: enc, max_length: 16}")


@case("prepare_data_vae_missing", r"vae")
def _(w):
    (w.root / "clips").mkdir()
    (w.root / "clips" / "a.mp4").write_bytes(b"not decoded before the VAE loads")
    (w.root / "clips" / "captions.csv").write_text("video,caption\na.mp4,a red ball\n")
    return ["prepare-data", "videos=clips", "captions=clips/captions.csv", "out=shards",
            "vae={type: wan_vae, path: no_vae}", TOY_TEXT, "height=32", "width=32", "frames=5"]


@case("prepare_data_caption_names_missing_video", r"captions\.csv:3: video not found")
def _(w):
    (w.root / "clips").mkdir()
    (w.root / "clips" / "a.mp4").write_bytes(b"x")
    (w.root / "clips" / "captions.csv").write_text("video,caption\na.mp4,one\nb.mp4,two\n")
    return ["prepare-data", "videos=clips", "captions=clips/captions.csv", "out=shards",
            "vae={type: toy_codec}", TOY_TEXT, "height=32", "width=32", "frames=5"]


# --- generate: weights, sizes, file names ----------------------------------------------------
@case("generate_vae_missing", r"vae")
def _(w):
    return generate(w, "vae={type: wan_vae, path: no_vae}")


@case("generate_height_not_whole_patches", r"height: generate: height x width 36x32 gives 9x8 latents, not whole 2x2 patches")
def _(w):
    return generate(w, "height=36")


@case("generate_height_not_whole_pixels", r"height x width 33x32 is not a multiple of the VAE's spatial factor 4")
def _(w):
    return generate(w, "height=33")


@case("generate_vae_channels_differ", r"vae: generate: the VAE gives 8-channel latents, the model reads 16")
def _(w):
    return generate(w, "vae={type: toy_codec, channels: 8}")


@case("generate_filename_escapes_out_dir", r"'filename' gives '\.\./a-red-ball-0\.mp4'")
def _(w):
    return generate(w, "filename=../{slug}-{index}.mp4")


@case("generate_filename_makes_a_subfolder", r"must be a plain file name inside out_dir")
def _(w):
    return generate(w, "filename='{slug}/{index}.mp4'")


@case("weights_config_not_json", r"student/config\.json: not a readable JSON config")
def _(w):
    student = copy(w.student, w.root / "student")
    (student / "config.json").write_text("{\"patch_size\": [1, 2")
    return generate(w, checkpoint="student")


@case("weights_config_wrong_type", r"student/config\.json: num_layers: expected an integer >= 1, got str")
def _(w):
    student = copy(w.student, w.root / "student")
    cfg = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**cfg, "num_layers": "three"}))
    return generate(w, checkpoint="student")


@case("weights_truncated", r"diffusion_pytorch_model\.safetensors: unreadable safetensors weights")
def _(w):
    f = copy(w.student, w.root / "student") / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return generate(w, checkpoint="student")


@case("weights_shape_mismatch", r"student: tensor 'proj_out\.weight' has shape \(64, 384\)")
def _(w):
    student = copy(w.student, w.root / "student")
    f = student / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    sd = load_file(str(f))
    sd["proj_out.weight"] = torch.zeros(64, 384)
    save_file(sd, str(f))
    return generate(w, checkpoint="student")


@case("weights_index_escapes_folder", r"weight file '\.\./elsewhere\.safetensors' is not a plain file name")
def _(w):
    student = copy(w.student, w.root / "student")
    (student / "diffusion_pytorch_model.safetensors").rename(w.root / "elsewhere.safetensors")
    (student / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"proj_out.weight": "../elsewhere.safetensors"}}))
    return generate(w, checkpoint="student")


@case("generate_checkpoint_missing", r"checkpoint directory not found")
def _(w):
    return generate(w, checkpoint="nowhere")


# --- eval: what a folder of videos must look like ---------------------------------------------
@case("eval_file_not_named_prompt_index", r"clip\.mp4: not named '\{prompt\}-\{index\}\.mp4'")
def _(w):
    (w.root / "videos").mkdir()
    (w.root / "videos" / "clip.mp4").write_bytes(b"never decoded")
    return ["eval", "videos=videos", "out=scores"]


@case("eval_manifest_escapes_folder", r"'file' entry '\.\./secret\.mp4' is not a plain file name")
def _(w):
    (w.root / "videos").mkdir()
    (w.root / "videos" / "generate_manifest.json").write_text(
        json.dumps({"videos": [{"file": "../secret.mp4", "prompt": "x"}]}))
    return ["eval", "videos=videos", "out=scores"]


@case("eval_manifest_malformed", r"generate_manifest\.json: expected \{'videos'")
def _(w):
    (w.root / "videos").mkdir()
    (w.root / "videos" / "generate_manifest.json").write_text(json.dumps({"clips": []}))
    return ["eval", "videos=videos", "out=scores"]


# --- jobs that replace data: the old set survives a failed overwrite -------------------------------
def clips(w, rows: str, **videos: bytes) -> list[str]:
    """A clips/ folder with `videos` (name -> bytes) and a captions.csv of `rows`; the prepare-data
    command line that reads them (toy codec, 32x32, 5 frames)."""
    (w.root / "clips").mkdir()
    for name, data in videos.items():
        (w.root / "clips" / name).write_bytes(data)
    (w.root / "clips" / "captions.csv").write_text("video,caption\n" + rows)
    return ["prepare-data", "videos=clips", "captions=clips/captions.csv", "out=shards",
            "vae={type: toy_codec}", TOY_TEXT, "height=32", "width=32", "frames=5"]


@case("prepare_data_overwrite_keeps_old_set", r"a\.mp4: cannot decode video")
def _(w):
    copy(w.shards, w.root / "shards")  # a complete data set, to be replaced
    return [*clips(w, "a.mp4,a red ball\n", **{"a.mp4": b"not a video"}), "overwrite=true", "progress=false"]


@case("prepare_data_caption_escapes_videos", r"captions\.csv:2: video '\.\./outside/clip\.mp4' is not a path inside videos=clips")
def _(w):
    (w.root / "outside").mkdir()
    (w.root / "outside" / "clip.mp4").write_bytes(b"someone else's video")
    return clips(w, "../outside/clip.mp4,a red ball\n")


@case("prepare_data_caption_absolute_path", r"captions\.csv:2: video '/etc/hostname' is not a path inside")
def _(w):
    return clips(w, "/etc/hostname,a red ball\n")


@case("prepare_data_jsonl_row_not_an_object", r"captions\.jsonl:2: a row must be a JSON object .*got list")
def _(w):
    argv = clips(w, "", **{"a.mp4": b"x"})
    (w.root / "clips" / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "one"}\n["a.mp4", "two"]\n')
    return [a.replace("captions.csv", "captions.jsonl") for a in argv]


@case("prepare_data_captions_not_utf8", r"captions\.csv: not UTF-8 text")
def _(w):
    argv = clips(w, "", **{"a.mp4": b"x"})
    (w.root / "clips" / "captions.csv").write_bytes("video,caption\na.mp4,caf\u00e9\n".encode("latin-1"))
    return argv


# --- the study's report -----------------------------------------------------------------------------
@case("study_report_out_is_a_file", r"out: report\.md exists and is not a folder")
def _(w):
    from oneforcing.study.design import build_design
    from oneforcing.study.store import StudyStore
    from oneforcing.testing.study_videos import write_prompts, write_study_folders

    folders = write_study_folders(w.root / "videos", encode=False)
    StudyStore.open(w.root / "votes.sqlite", build_design(folders, str(write_prompts(w.root / "prompts.txt"))))
    (w.root / "report.md").write_text("an earlier report")
    return ["study-report", "db=votes.sqlite", "out=report.md"]


# --- long videos: refused before anything is allocated -----------------------------------------------
BLOCKS_OF_3 = "model={type: causal_wan, attention: sdpa, frames_per_block: 3}"


@case("generate_window_smaller_than_a_block", r"sampler\.local_attn_size: generate: a block of 3 latent frames does not fit local_attn_size=2")
def _(w):
    return generate(w, "sampler={type: causal_inference, local_attn_size: 2}", "num_frames=21", BLOCKS_OF_3)


@case("generate_sink_leaves_no_room_for_a_block", r"need local_attn_size >= sink_size \+ 3")
def _(w):
    return generate(w, "sampler={type: causal_inference, local_attn_size: 4, sink_size: 2}", "num_frames=21", BLOCKS_OF_3)


@case("generate_absurd_window", r"sampler\.local_attn_size: generate: the KV cache of 100000000000 latent frames needs .* TiB, more than")
def _(w):
    return generate(w, "sampler={type: causal_inference, local_attn_size: 100000000000, sink_size: 1}")


@case("generate_absurd_frame_count", r"num_frames: generate: a decoded video of 4000000001 frames .* TiB as float32, more than")
def _(w):
    return generate(w, "num_frames=4000000001")


@case("generate_absurd_size", r"height: generate: one decoded frame at 400000x400000 \(batch of 1\) needs .* TiB")
def _(w):
    return generate(w, "height=400000", "width=400000")


# --- curvature: the teacher and the prompts, named by curvature's own keys ---------------------------
def curvature(*extra: str) -> list[str]:
    return ["curvature", "teacher=${assets:toy_teacher}", "split=test", "num_prompts=2", "batch_size=2",
            "sampler={type: teacher_ode, num_steps: 10}", "out=curv", "plot=false", TOY_TEXT, *extra]


@case("curvature_teacher_missing", r"teacher: 'no_teacher' does not exist")
def _(w):
    return curvature("teacher=no_teacher")


@case("curvature_too_few_prompts", r"num_prompts: num_prompts=10 but prompts_from 'shards' holds 4")
def _(w):
    copy(w.shards, w.root / "shards")
    return curvature("split=null", "prompts_from=shards", "num_prompts=10")


@case("curvature_teacher_of_other_channels", r"teacher: teacher has in_channels=4 but the latents have 16 channels")
def _(w):
    return curvature(f"teacher={w.wan}", "model={causal: false, attention: sdpa}")


# --- generate: prompt schedules (oneforcing/streaming/schedule.py) ------------------------------
def _schedule_recipe(w, schedule: str, *extra: str) -> list[str]:
    (w.root / "switch.yaml").write_text(
        "job: generate\ncheckpoint: ${assets:toy_student_base}\nout_dir: videos\nvae: {type: toy_codec}\n"
        "text_encoder: {type: umt5, path: '${assets:toy_text_encoder}', max_length: 16}\n"
        "model: {type: causal_wan, attention: sdpa}\nnum_frames: 6\nheight: 32\nwidth: 32\n"
        f"prompt_schedule: {schedule}\n")
    return ["generate", "switch.yaml", *extra]


@case("generate_schedule_frames_not_increasing",
      r"switch\.yaml: prompt_schedule\[1\]\.frame: generate: frames must increase, got 0 after 0")
def _(w):
    return _schedule_recipe(w, "[{frame: 0, prompt: a red ball}, {frame: 0, prompt: a blue cube}]")


@case("generate_schedule_entry_without_prompt",
      r"switch\.yaml: prompt_schedule\[1\]: generate: each entry must be a mapping with exactly 'frame' and 'prompt'")
def _(w):
    return _schedule_recipe(w, "[{frame: 0, prompt: a red ball}, {frame: 3}]")


@case("generate_schedule_switch_mode", r"switch\.yaml: prompt_switch: generate: prompt_switch must be one of recache, keep")
def _(w):
    return _schedule_recipe(w, "[{frame: 0, prompt: a red ball}]", "prompt_switch=recompute")


@case("generate_schedule_past_the_end", r"prompt_schedule\[1\]\.frame: generate: frame 6 is past the video's last frame \(5\)")
def _(w):
    return _schedule_recipe(w, "[{frame: 0, prompt: a red ball}, {frame: 6, prompt: a blue cube}]")


@case("generate_schedule_and_prompts", r"prompt_schedule: generate: give either 'prompt_schedule' or prompt")
def _(w):
    return _schedule_recipe(w, "[{frame: 0, prompt: a red ball}]", "prompt=a cat")
