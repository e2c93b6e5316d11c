import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oneforcing.cli import main
from oneforcing.config import load_recipe
from oneforcing.errors import RecipeError


def write(tmp_path, files: dict):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)


def test_base_inheritance_deep_merge_and_delete(tmp_path):
    write(tmp_path, {
        "base/common.yaml": "job: dist_check\nseed: 1\nopt: {lr: 1.0e-5, betas: [0, 0.999]}\nlosses: [a, b]\n",
        "mid.yaml": "_base_: base/common.yaml\nopt: {lr: 2.0e-5}\nsched: {kind: x, k: 5}\n",
        "top.yaml": "_base_: [mid.yaml]\nlosses: [c]\nsched: {_delete_: true, kind: y}\n",
    })
    r = load_recipe(tmp_path / "top.yaml")
    assert r["opt"] == {"lr": 2e-5, "betas": [0, 0.999]}  # merged key by key
    assert r["losses"] == ["c"]                            # lists are replaced
    assert r["sched"] == {"kind": "y"}                     # _delete_ replaces the base mapping
    assert r["seed"] == 1


def test_overrides_are_yaml_typed_and_reach_lists(tmp_path):
    write(tmp_path, {"r.yaml": "job: dist_check\nlosses: [{type: dmd, weight: 1.0}, {type: gan, weight: 0.03}]\n"})
    r = load_recipe(tmp_path / "r.yaml", ["losses[1].weight=0.5", "seed=7", "steps=[1000,750]", "name=null"])
    assert r["losses"][1]["weight"] == 0.5 and r["seed"] == 7 and r["steps"] == [1000, 750]
    assert r["name"] is None


def test_references_keep_type_and_interpolate(tmp_path, monkeypatch):
    monkeypatch.setenv("OF_TEST_DIR", "/data")
    write(tmp_path, {"r.yaml": "_paths: {root: /ckpt, n: 21}\njob: dist_check\nframes: ${_paths.n}\n"
                               "model: ${_paths.root}/gen\ndata: ${env:OF_TEST_DIR}\nfallback: ${env:OF_NOPE,3}\n"})
    r = load_recipe(tmp_path / "r.yaml")
    assert r["frames"] == 21 and r["model"] == "/ckpt/gen" and r["data"] == "/data" and r["fallback"] == 3
    assert "_paths" not in r  # private keys are dropped


def test_show_prints_resolved_recipe(tmp_path, capsys):
    write(tmp_path, {"r.yaml": "job: dist_check\nmessage: hi\n"})
    assert main(["show", str(tmp_path / "r.yaml"), "message=bye"]) == 0
    out = capsys.readouterr().out
    assert "message: bye" in out and "job: dist_check" in out
    assert "effective batch" not in out  # not a training recipe


def test_show_ends_a_training_recipe_with_its_effective_batch(capsys, monkeypatch):
    """micro-batch x world size (the launcher's WORLD_SIZE, 1 alone) x gradient accumulation, as a
    YAML comment: the output still parses as the recipe."""
    recipe = str(Path(__file__).resolve().parents[1] / "recipes/causal_forcing_cd_init.yaml")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["show", recipe]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == ("# effective batch: micro-batch 1 x world size 1 x gradient accumulation 8 "
                                    "= 8 per update (on 8 ranks: 64)")
    assert yaml.safe_load(out)["deepspeed"]["gradient_accumulation"] == 8
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["show", recipe, "deepspeed.micro_batch_size=3", "deepspeed.gradient_accumulation=2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "# effective batch: micro-batch 3 x world size 8 x gradient accumulation 2 = 48 per update"


BAD = [
    # (id, files, argv after the command (recipe written as r.yaml), substring expected in the line)
    ("missing-file", {}, ["show", "{d}/nope.yaml"], "recipe file not found"),
    ("bad-yaml", {"r.yaml": "job: dist_check\nmessage: [unclosed\nseed: 1\n"}, ["show", "{d}/r.yaml"], "invalid YAML: line"),
    ("not-a-mapping", {"r.yaml": "- a\n- b\n"}, ["show", "{d}/r.yaml"], "must be a mapping"),
    ("no-job", {"r.yaml": "seed: 1\n"}, ["show", "{d}/r.yaml"], "missing 'job'"),
    ("unknown-job", {"r.yaml": "job: dist_chek\n"}, ["show", "{d}/r.yaml"], "did you mean 'dist_check'"),
    ("unknown-key", {"r.yaml": "job: dist_check\nmesage: x\n"}, ["show", "{d}/r.yaml"], "takes no key 'mesage'"),
    ("wrong-type", {"r.yaml": "job: dist_check\nmessage: [1, 2]\n"}, ["show", "{d}/r.yaml"], "expected str"),
    ("circular-base", {"r.yaml": "_base_: s.yaml\njob: dist_check\n", "s.yaml": "_base_: r.yaml\n"},
     ["show", "{d}/r.yaml"], "circular _base_"),
    ("missing-base", {"r.yaml": "_base_: gone.yaml\njob: dist_check\n"}, ["show", "{d}/r.yaml"], "base recipe 'gone.yaml' not found"),
    ("base-not-str", {"r.yaml": "_base_: {a: 1}\njob: dist_check\n"}, ["show", "{d}/r.yaml"], "_base_ must be"),
    ("override-no-equals", {"r.yaml": "job: dist_check\n"}, ["show", "{d}/r.yaml", "message"], "expected key=value"),
    ("override-bad-path", {"r.yaml": "job: dist_check\n"}, ["show", "{d}/r.yaml", "a..b=1"], "bad key path"),
    ("override-dashes", {"r.yaml": "job: dist_check\n"}, ["show", "{d}/r.yaml", "--message=x"], "without dashes"),
    ("override-missing-parent", {"r.yaml": "job: dist_check\nopt: {lr: 1}\n"}, ["show", "{d}/r.yaml", "optt.lr=2"], "did you mean 'opt'"),
    ("override-index-range", {"r.yaml": "job: dist_check\nl: [1, 2]\n"}, ["show", "{d}/r.yaml", "l[5]=3"], "out of range"),
    ("override-not-list", {"r.yaml": "job: dist_check\nl: {a: 1}\n"}, ["show", "{d}/r.yaml", "l[0]=3"], "is not a list"),
    ("override-bad-yaml", {"r.yaml": "job: dist_check\n"}, ["show", "{d}/r.yaml", "message=[1,"], "not valid YAML"),
    ("unresolved-ref", {"r.yaml": "job: dist_check\nmessage: ${nope.x}\n"}, ["show", "{d}/r.yaml"], "names no key"),
    ("circular-ref", {"r.yaml": "job: dist_check\na: ${b}\nb: ${a}\n"}, ["show", "{d}/r.yaml"], "circular reference"),
    ("missing-env", {"r.yaml": "job: dist_check\nmessage: ${env:OF_SURELY_UNSET}\n"}, ["show", "{d}/r.yaml"], "OF_SURELY_UNSET"),
    ("seed-not-int", {"r.yaml": "job: dist_check\nseed: one\n"}, ["run", "{d}/r.yaml"], "'seed' must be an integer"),
    ("missing-import", {"r.yaml": "job: dist_check\nimports: [no_such_module_xyz]\n"}, ["run", "{d}/r.yaml"], "cannot import module"),
    ("directory", {"sub/x.yaml": ""}, ["show", "{d}/sub"], "is a directory"),
]


@pytest.mark.parametrize("files,argv,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_recipes_give_one_line_and_exit_2(tmp_path, capsys, files, argv, expected):
    write(tmp_path, files)
    rc = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err


def test_entry_point_maps_user_errors_to_exit_2_without_traceback(tmp_path, root):
    write(tmp_path, {"r.yaml": "job: dist_check\nwieght: 1\n"})
    proc = subprocess.run([sys.executable, str(root / "recipes/run.py"), str(tmp_path / "r.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'r.yaml'}: wieght: job 'dist_check' takes no key 'wieght'. Accepted keys: out, message"
    ]


def test_load_recipe_raises_recipe_error(tmp_path):
    with pytest.raises(RecipeError):
        load_recipe(tmp_path / "absent.yaml")


def test_assets_reference(tmp_path):
    write(tmp_path, {"r.yaml": "job: dist_check\nmessage: ${assets:toy_text_encoder}\n"})
    r = load_recipe(tmp_path / "r.yaml")
    assert r["message"].endswith("oneforcing/assets/toy_text_encoder")
    write(tmp_path, {"bad.yaml": "job: dist_check\nmessage: ${assets:nope}\n"})
    with pytest.raises(RecipeError, match="no packaged asset 'nope'"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "report.yaml", "report_quick.yaml"])
def test_every_stage_and_task_of_the_toy_pipelines_builds(root, name):
    """The demo's stages and the reports' tasks, with the overrides they add (a label with ': '
    once reached a stage as a YAML mapping, after the demo had trained for minutes)."""
    from oneforcing.jobs.base import prepare

    toy = root / "recipes" / "toy"
    _, _, job = prepare(str(toy / name), [])
    if name == "demo.yaml":
        assert len(job.prepare_stages(toy)) == 6
    else:
        tasks = job.plan(toy)
        job.validate(tasks)
        assert len({t.key for t in tasks}) == len(tasks)
