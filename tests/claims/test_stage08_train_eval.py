"""Stage 8's claims (train and eval modes, dropout), each shown by running it, in every stage with
dropout."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from common.data import make_synthetic
from common.harness import driver, load_stage, stage_options
from tests.helpers import a_batch, assert_close, assert_differs, has_dropout, stages_where

WITH_DROPOUT = stages_where(has_dropout)


@pytest.mark.stage8
def test_dropout_at_p_zero_returns_its_input_and_draws_no_random_numbers():
    x, state = torch.randn(4, 120), torch.get_rng_state()
    assert torch.equal(nn.Dropout(0.0).train()(x), x)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.stage8
def test_dropout_zeroes_with_probability_p_and_scales_the_rest_by_one_over_one_minus_p():
    torch.manual_seed(0)
    out = nn.Dropout(0.25).train()(torch.ones(100_000, dtype=torch.float64))
    assert set(out.unique().tolist()) == {0.0, 1 / 0.75}
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01  # 7 standard deviations of 100,000 draws
    assert torch.equal(nn.Dropout(0.25).eval()(torch.ones(10)), torch.ones(10))


@pytest.mark.parametrize("stage_name", WITH_DROPOUT)
def test_dropout_differs_in_train_mode_and_vanishes_in_eval_mode(stage_name, params):
    """What the lesson page's snippet prints, and more: two train-mode forwards of one batch
    differ; in eval mode they agree, bit for bit, with each other and (to round-off) with the
    network without dropout."""
    x = a_batch(4)[0]
    d = driver(stage_name)
    without = d.forward(d.build(params, dtype="float64"), x)
    model = d.build(params, dtype="float64", dropout=0.5)
    model.net.train()
    assert_differs(d.forward(model, x), d.forward(model, x), "float64", "two train-mode forwards",
                   times=1e7)  # not round-off: about half of fc1's and fc2's outputs are zeroed
    model.net.eval()
    first, second = d.forward(model, x), d.forward(model, x)
    assert torch.equal(first, second), "two eval-mode forwards, bit for bit"
    assert_close(first, without, "float64", "eval mode against the network without dropout")


@pytest.mark.stage8
def test_evaluate_predicts_every_test_image_in_eval_mode(params):
    stage = load_stage(8)
    data = make_synthetic(0, n_train=10, n_test=1500)  # more than one evaluation batch
    _, test_loader = stage.make_loaders(data, stage_options(stage))
    model = driver(stage).build(params).net
    model.train()
    correct = stage.evaluate(model, test_loader)
    assert not model.training, "evaluate() leaves the model in eval mode"
    with torch.no_grad():
        expected = model(torch.stack([test_loader.dataset[i][0] for i in range(1500)])).argmax(dim=1)
    assert isinstance(correct, int), "a count, as the tutorial keeps it"
    assert correct == int((expected == torch.from_numpy(data.test_y)).sum()), "counted over every test image"
