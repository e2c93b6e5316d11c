"""The Batch contract: datasets yield Batches; a field a loss needs but the dataset lacks is an
error naming the recipe key and the dataset, never a silent stand-in."""

import pytest
import torch

from oneforcing.data import Batch, OdePairShards
from oneforcing.data.batch import as_batch
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.schedulers import FlowMatchScheduler, ShiftedUniformTimesteps
from oneforcing.trainer.step import StepContext

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler


def ode_fields(B=2, K=3):
    return {"prompt_embed": torch.randn(B, 4, 8), "states": torch.randn(B, K, 2, 4, 2, 2),
            "timesteps": torch.tensor([[1000.0, 937.5, 833.3]] * B), "clean": torch.randn(B, 2, 4, 2, 2),
            "prompt": ["a", "b"]}


def context(batch):
    return StepContext(step=0, phase="generator", batch=batch, generator=torch.nn.Identity(), critic=None,
                       real_score=None, scheduler=FLOW, timesteps=ShiftedUniformTimesteps(scheduler=FLOW),
                       sampler=None, uncond_text=None, rng=torch.Generator().manual_seed(0), ctx=RunContext())


def test_ode_pair_shards_give_ode_fields_and_no_latents():
    batch = OdePairShards.to_batch(None, ode_fields())
    assert batch.latents is None and batch.ode_x0.shape == (2, 2, 4, 2, 2)
    assert batch.ode_t.tolist() == pytest.approx([1000.0, 937.5, 833.3])  # one row for the batch
    assert batch.filled() == ["text", "ode_states", "ode_t", "ode_x0"] and batch.dataset == "ode_pairs"


def test_missing_latents_name_the_recipe_key_and_the_dataset():
    s = context(OdePairShards.to_batch(None, ode_fields()).at("data"))
    with pytest.raises(UserError) as err:
        s.latents  # noqa: B018 - the property raises
    assert str(err.value).startswith("data: a loss reading the real latents (s.latents) needs 'latents'")
    assert "the dataset 'ode_pairs' gives none (it gives text, ode_states, ode_t, ode_x0)" in str(err.value)
    with pytest.raises(UserError, match="^data: the generator rollout .* needs 'latents'"):
        s.rollout(sampler=lambda *a, **k: None)


def test_a_dataset_yielding_dicts_is_named_and_ode_data_merges():
    with pytest.raises(UserError, match="^ode_data: the dataset yields dict, not oneforcing.data.Batch"):
        as_batch({"latents": torch.zeros(1)}, "ode_data")
    real = Batch(text=torch.zeros(2, 4, 8), latents=torch.zeros(2, 2, 4, 2, 2))
    ode = OdePairShards.to_batch(None, ode_fields())
    both = real.with_ode(ode).cast(torch.bfloat16)
    assert both.latents.dtype == torch.bfloat16 and both.ode_states.dtype == torch.bfloat16
    assert torch.equal(both.ode_text, ode.text.bfloat16()) and both.key == "data"


def test_bf16_keeps_the_ode_timesteps_exact():
    ode = Batch(text=torch.zeros(1, 4, 8), ode_t=torch.tensor([1000.0, 937.5, 833.3333, 625.0]))
    cast = ode.cast(torch.bfloat16)
    assert cast.ode_t.dtype == torch.float32 and torch.equal(cast.ode_t, ode.ode_t)
    assert cast.text.dtype == torch.bfloat16
    assert ode.ode_t.bfloat16().float().tolist() != ode.ode_t.tolist()  # what the cast used to do
