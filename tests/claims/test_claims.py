"""The stages' claims about PyTorch, each shown by running it, and their printed teaching points.

Every test is named after the sentence it checks (in the stage whose marker it carries). A claim
about the GPU is tested on the GPU, marked `cuda` and skipped where none is visible; a CPU
stand-in is used only where the code path is the same one (`Module.to()` treats a dtype and a
device alike: both go through `Module._apply`).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tests.helpers import ALL_STAGES, free_port, stage_number
from torch import nn, optim
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from torchvision import transforms

from common.data import make_synthetic
from common.harness import TOLERANCES, driver, load_stage, relative_error, sample_batches, stage_options
from common.seed import seed_everything
from common.weights import PARAM_NAMES, reference_params

NAN = float("nan")
SMOKE = ["--data", "synthetic", "--epochs", "1", "--batch-size", "8"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
# "The same, to round-off": these claims compute in float64 with the sums in another order (a
# chunked batch, a GPU kernel), so they use the course's float64 tolerance (common/harness/).
ROUND_OFF = TOLERANCES["float64"].rtol


def same_to_round_off(actual, expected) -> bool:
    return relative_error(actual.detach().cpu(), expected.detach().cpu()) <= ROUND_OFF


def stages_from(first: int, last: int = 11) -> list:
    return [p for p in ALL_STAGES if first <= stage_number(p.values[0]) <= last]


def run_main(stage_name: str, out, *extra: str) -> tuple[str, dict]:
    """Run a stage's main() briefly; its record's losses.csv and params.npz."""
    summary = load_stage(stage_name).main(SMOKE + ["--out", str(out), *extra])
    with open(f"{summary['record']}/losses.csv") as f:
        losses = f.read()
    with np.load(f"{summary['record']}/params.npz") as saved:
        return losses, dict(saved)


def net(stage: int = 6, dtype=torch.float64, dropout: float | None = None) -> nn.Module:
    """A stage's Net with the reference weights."""
    model = load_stage(stage).Net() if dropout is None else load_stage(stage).Net(dropout)
    model = model.to(dtype)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    return model


def a_batch(n: int = 4, seed: int = 0, dtype=torch.float64):
    [(x, y)] = sample_batches(1, n, seed=seed)
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y)


def train(model: nn.Module, optimizer, steps: int = 3) -> None:
    for x, y in sample_batches(steps, 4, seed=1):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.as_tensor(x, dtype=model.conv1.weight.dtype, device=model.conv1.weight.device)),
                        torch.as_tensor(y, device=model.conv1.weight.device)).backward()
        optimizer.step()


def assert_same_parameters(a: nn.Module, b: nn.Module, bit_for_bit: bool = True) -> None:
    """Bit for bit on the CPU; a GPU may add in another order from run to run (atomics)."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.cpu(), q.cpu()) if bit_for_bit else same_to_round_off(p, q), name


# ---------------------------------------------------------------- stages 1-4: ops by hand, then F
@pytest.mark.parametrize("stage_name", stages_from(1, 3))
def test_hand_written_max_pool_differs_from_f_max_pool2d_on_nan(stage_name):
    stage = load_stage(stage_name)
    uses_numpy = stage.DTYPES["float32"] is np.float32

    def own(window):
        x = torch.tensor(window, dtype=torch.float64).reshape(1, 1, 2, 2)
        out = stage.max_pool2x2(x.numpy() if uses_numpy else x)
        return float((out[0] if isinstance(out, tuple) else out).reshape(-1)[0])

    def library(window):
        return float(F.max_pool2d(torch.tensor(window, dtype=torch.float64).reshape(1, 1, 2, 2), 2))

    assert math.isnan(library([1.0, NAN, 0.0, 0.0])), "F.max_pool2d: a NaN anywhere in the window wins"
    assert own([1.0, NAN, 0.0, 0.0]) == 1.0, "by hand: a NaN after the first input is skipped (NaN > x is False)"
    assert math.isnan(own([NAN, 1.0, 0.0, 0.0])) and math.isnan(library([NAN, 1.0, 0.0, 0.0]))


@pytest.mark.stage2
def test_torch_tensor_keeps_float64_from_numpy():
    assert torch.tensor(np.zeros(3)).dtype == torch.float64
    assert torch.from_numpy(np.zeros(3)).dtype == torch.float64
    assert np.array([0.5]).dtype == np.float64, "numpy's default float"
    assert torch.tensor([0.5]).dtype == torch.get_default_dtype() == torch.float32, "torch's default float"


@pytest.mark.stage2
def test_from_numpy_shares_memory_but_torch_tensor_copies():
    array = np.zeros(3)
    shared, copied = torch.from_numpy(array), torch.tensor(array)
    shared -= 1  # in place, as the hand-written update changes the weights
    copied -= 1
    assert array.tolist() == [-1.0, -1.0, -1.0], "from_numpy: the array changed with the tensor"
    copied -= 1
    assert array.tolist() == [-1.0, -1.0, -1.0], "torch.tensor: the array did not change"


@pytest.mark.stage2
def test_a_trailing_underscore_changes_the_tensor_in_place():
    w = torch.zeros(3)
    new = w.add(1)
    assert new is not w and w.tolist() == [0.0, 0.0, 0.0]
    same = w.add_(1)
    assert same is w and w.tolist() == [1.0, 1.0, 1.0]
    assert w.zero_() is w and w.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("stage_name", stages_from(2))
def test_show_tensor_says_what_it_shows_and_leaves_the_weights_alone(stage_name, capsys):
    weight = torch.tensor(reference_params(0)["conv1.weight"], dtype=torch.float32)
    before = weight.clone()
    load_stage(stage_name).show_tensor("conv1.weight", weight)
    out = capsys.readouterr().out
    assert "torch.float32 on cpu, shape (6, 3, 5, 5)" in out
    assert "w.add(1) is w: False, w.add_(1) is w: True" in out
    assert torch.equal(weight, before)


@pytest.mark.stage3
def test_in_place_update_of_a_leaf_without_no_grad_raises():
    p = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad is being used in an in-place"):
        p -= 0.1 * torch.ones(3)
    with torch.no_grad():
        p -= 0.1 * torch.ones(3)
    assert p.is_leaf and p.grad_fn is None and p.requires_grad


@pytest.mark.stage3
def test_an_update_under_no_grad_is_still_seen_by_a_graph_that_saved_the_old_value():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (p * p).sum()  # saves p for the backward
    with torch.no_grad():
        p.mul_(10)  # counted in p's version counter
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.stage3
def test_data_update_skips_autograd_checks():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (p * p).sum()  # d loss / dp = 2 p, with p as the loss saw it: (2, 4)
    p.data.mul_(10)  # a tensor with a version counter of its own: autograd sees nothing
    loss.backward()  # no error ...
    assert p.grad.tolist() == [20.0, 40.0], "... and a silently wrong gradient, from the new values"


@pytest.mark.stage3
def test_backward_adds_to_grad_until_it_is_set_to_none():
    stage = load_stage(3)
    params = {"w": torch.tensor([3.0], requires_grad=True)}
    for _ in range(2):
        (params["w"] * 2).sum().backward()
    assert params["w"].grad.tolist() == [4.0], "two backward() calls: 2 + 2"
    stage.zero_grad(params)
    assert params["w"].grad is None
    (params["w"] * 2).sum().backward()
    assert params["w"].grad.tolist() == [2.0]


@pytest.mark.stage4
def test_f_cross_entropy_is_log_softmax_then_nll_loss_averaged():
    logits, y = torch.randn(7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.arange(7)
    by_hand = -F.log_softmax(logits, dim=1)[torch.arange(7), y].mean()
    assert same_to_round_off(F.cross_entropy(logits, y), F.nll_loss(F.log_softmax(logits, dim=1), y))
    assert same_to_round_off(F.cross_entropy(logits, y), by_hand)


@pytest.mark.stage4
def test_f_cross_entropy_subtracts_the_largest_logit_before_exponentiating():
    logits, y = torch.tensor([[1000.0, 0.0, -5.0]]), torch.tensor([1])
    naive = -torch.log(logits.exp()[0, 1] / logits.exp().sum())  # exp(1000) overflows to inf
    assert not torch.isfinite(naive)
    assert F.cross_entropy(logits, y).item() == 1000.0, "-log softmax = 1000 + log(1 + e^-1005): 1000 in float32"


@pytest.mark.stage4
def test_reduction_none_gives_one_loss_per_image_and_the_default_is_their_mean():
    logits, y = torch.randn(5, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.arange(5)
    losses = F.cross_entropy(logits, y, reduction="none")
    assert losses.shape == (5,)
    assert same_to_round_off(losses.mean(), F.cross_entropy(logits, y))
    assert same_to_round_off(losses.mean(), nn.CrossEntropyLoss()(logits, y))


def printed_numbers(line: str, after: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", line.split(after, 1)[1])]


@pytest.mark.parametrize("stage_name", stages_from(4))
def test_the_printed_cost_is_the_mean_of_the_printed_losses(stage_name, capsys):
    stage = load_stage(stage_name)
    x, y = a_batch(4, dtype=torch.float32)
    d = driver(stage)
    model = d.build(reference_params(0))
    if stage_number(stage_name) < 6:
        stage.show_loss_and_cost(model.net, x, y)
    else:
        stage.show_loss_and_cost(model.net, nn.CrossEntropyLoss(), x, y)
    line = capsys.readouterr().out
    each, rest = line.split("; their mean, the cost: ")
    losses = printed_numbers(each, "(reduction='none'): ")
    mean, returned = (float(v) for v in re.findall(r"\d+\.\d{4}", rest))
    assert len(losses) == 4 and abs(sum(losses) / 4 - mean) <= 1e-4  # each printed to 4 decimals
    assert mean == returned, "the default reduction returns the mean"
    assert abs(mean - math.log(10)) < 0.2, "untrained: each of 10 classes gets about 1/10"


# ---------------------------------------------------------------- stage 5: nn.Module
@pytest.mark.stage5
def test_zero_grad_sets_grad_to_none():
    model = net(5)
    for zero_grad in (model.zero_grad, optim.SGD(model.parameters(), lr=0.1).zero_grad):
        F.cross_entropy(model(a_batch()[0]), a_batch()[1]).backward()
        assert all(p.grad is not None for p in model.parameters())
        zero_grad()
        assert all(p.grad is None for p in model.parameters())


@pytest.mark.stage5
def test_nn_init_runs_without_grad():
    model = load_stage(5).Net()
    weight = model.conv1.weight
    assert nn.init.kaiming_normal_(weight) is weight  # in place, outside no_grad(), and no error
    assert weight.is_leaf and weight.grad_fn is None and weight.requires_grad
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        weight.normal_()
    with torch.no_grad():
        weight.normal_()
    weight.data.normal_()  # bypasses autograd's checks: no error either


@pytest.mark.stage5
def test_new_layers_start_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = load_stage(5).Net()
    fan_ins = {"conv1": 3 * 5 * 5, "conv2": 6 * 5 * 5, "fc1": 400, "fc2": 120, "fc3": 84}
    for name, p in model.named_parameters():
        bound = 1 / math.sqrt(fan_ins[name.split(".")[0]])
        assert p.abs().max() <= bound, name
        if p.numel() > 100:  # enough draws to come near the bound
            assert p.abs().max() > 0.9 * bound, name


@pytest.mark.stage5
def test_load_state_dict_copies_into_the_existing_parameters_in_their_dtype():
    model = load_stage(5).Net()
    before = list(model.parameters())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})  # float64 arrays
    assert all(p is q for p, q in zip(model.parameters(), before))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.stage5
def test_calling_a_module_runs_its_hooks_but_forward_alone_does_not():
    model, calls = load_stage(5).Net(), []
    model.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    x = torch.zeros(1, 3, 32, 32)
    model.forward(x)
    assert calls == []
    model(x)
    assert calls == [(1, 10)]


# ---------------------------------------------------------------- stage 6: the optimizer, built last
@pytest.mark.stage6
def test_module_to_keeps_the_same_parameter_objects():
    model = load_stage(6).Net()
    before = list(model.parameters())
    assert model.to(torch.float64) is model
    assert all(p is q and p.dtype == torch.float64 for p, q in zip(model.parameters(), before))


@pytest.mark.stage6
def test_optimizer_built_before_load_state_dict_still_trains():
    early = load_stage(6).Net().to(torch.float64)
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    late = net(6)
    train(early, early_optimizer)
    train(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    assert not torch.equal(late.fc3.bias, torch.from_numpy(reference_params(0)["fc3.bias"])), "training moved it"
    assert_same_parameters(early, late)


@pytest.mark.stage6
def test_optimizer_built_before_module_to_still_trains():
    early = load_stage(6).Net()  # float32
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.to(torch.float64).load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    late = net(6)
    train(early, early_optimizer)
    train(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    assert_same_parameters(early, late)


@pytest.mark.stage6
def test_load_state_dict_with_assign_leaves_an_earlier_optimizer_behind():
    model = load_stage(6).Net().to(torch.float64)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in reference_params(0).items()}, assign=True)
    train(model, optimizer)  # steps the old Parameter objects; the model computes with the new ones
    for name, value in reference_params(0).items():
        assert np.array_equal(dict(model.named_parameters())[name].detach().numpy(), value), name


@pytest.mark.stage6
def test_overwriting_conversion_leaves_an_earlier_optimizer_behind():
    model = net(6, torch.float32)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.to(torch.float64)  # now makes new Parameter objects
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    before = [p.clone() for p in model.parameters()]
    train(model, optimizer)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "the model's parameters never moved"


@pytest.mark.stage6
def test_optimizer_state_does_not_follow_a_later_move():
    model = net(6, torch.float32)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, optimizer, steps=1)  # makes the momentum buffers, float32 like the parameters
    model.to(torch.float64)
    assert model.conv1.weight.dtype == torch.float64
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].dtype == torch.float32


@pytest.mark.stage6
def test_optimizer_load_state_dict_puts_the_state_on_each_parameters_dtype():
    saved = net(6, torch.float32)
    saved_optimizer = optim.SGD(saved.parameters(), lr=0.01, momentum=0.9)
    train(saved, saved_optimizer, steps=1)
    model = net(6, torch.float64)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].dtype == torch.float64


@pytest.mark.stage6
def test_cross_entropy_loss_module_computes_f_cross_entropy():
    logits, y = torch.randn(4, 10, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3, 9, 3])
    assert torch.equal(nn.CrossEntropyLoss()(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(nn.CrossEntropyLoss(reduction="none")(logits, y), F.cross_entropy(logits, y, reduction="none"))


# ---------------------------------------------------------------- stage 7: Dataset and DataLoader
@pytest.mark.stage7
def test_to_tensor_makes_uint8_images_the_default_dtype_float32():
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    assert transforms.ToTensor()(image).dtype == torch.float32
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert transforms.ToTensor()(image).dtype == torch.float64, "the default dtype, not float32 as such"
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.stage7
def test_a_float64_run_trains_on_images_normalised_in_float32():
    """Every uint8 value there is, through stage 7's float64 transform and stage 6's normalise()."""
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    through_float32 = load_stage(7).make_transform(torch.float32)(values[0])
    through_float64 = load_stage(7).make_transform(torch.float64)(values[0])
    by_hand = torch.from_numpy(load_stage(6).normalise(values, torch.float64)[0].numpy())
    assert through_float64.dtype == torch.float64
    assert torch.equal(through_float64, through_float32.double()), "normalised in float32, then widened"
    difference = (through_float64 - by_hand).abs().max().item()
    assert 0 < difference <= 2**-24, difference  # float32's rounding: half a unit in the last place at 1


@pytest.mark.stage7
def test_default_collate_makes_the_batch_the_dataloader_makes():
    stage = load_stage(7)
    data = make_synthetic(0, n_train=4, n_test=8)
    _, test_loader = stage.make_loaders(data, stage_options(stage))
    x, y = default_collate([test_loader.dataset[i] for i in range(4)])
    loader_x, loader_y = next(iter(DataLoader(test_loader.dataset, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, loader_x) and torch.equal(y, loader_y)


@pytest.mark.stage7
def test_iterating_a_dataloader_draws_a_random_number_but_indexing_its_dataset_does_not():
    """Why the stages look at test_loader.dataset[i], not next(iter(test_loader)): each new
    iterator draws a base seed for its workers from torch's global generator."""
    data = make_synthetic(0, n_train=4, n_test=8)
    test_set = load_stage(7).ArrayDataset(data.test_x, data.test_y, load_stage(7).make_transform(torch.float32))
    state = torch.get_rng_state()
    default_collate([test_set[i] for i in range(4)])
    assert torch.equal(torch.get_rng_state(), state)
    next(iter(DataLoader(test_set, batch_size=4)))
    assert not torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- stage 8: train and eval modes
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


@pytest.mark.parametrize("stage_name", stages_from(8))
def test_the_dropout_demonstration_shows_train_mode_differs_and_eval_mode_agrees(stage_name, capsys):
    model = net(stage_number(stage_name), dropout=0.0)
    load_stage(stage_name).show_train_and_eval_modes(model, a_batch(4)[0])
    out = capsys.readouterr().out
    assert float(re.search(r"differ by up to (\d+\.\d+)", out).group(1)) > 0
    assert "two eval-mode forwards are identical: True" in out and "--dropout: 0.0" in out
    assert model.dropout.p == 0.0 and model.training, "the run's own model is left as it was"


@pytest.mark.parametrize("stage_name", stages_from(2))
def test_the_teaching_printouts_leave_the_run_bit_for_bit_unchanged(stage_name, tmp_path, monkeypatch):
    """The printouts copy, fork or only read: with them switched off, the run is the same. From
    stage 8 on the run uses dropout, so it draws random numbers the printouts must not take.
    (On the CPU, where a run repeats bit for bit; the GPU's fork is checked on its own below.)"""
    stage = load_stage(stage_name)
    extra = ["--max-steps", "6", "--seed", "4", "--threads", "1"]  # a fixed thread count: see the README's Determinism
    extra += ["--dropout", "0.3"] if stage_number(stage_name) >= 8 else []
    extra += ["--device", "cpu"] if stage_number(stage_name) >= 9 else []
    shown = run_main(stage_name, tmp_path / "shown", *extra)
    silenced = [name for name in ("show_tensor", "show_loss_and_cost", "show_gradient", "show_train_and_eval_modes")
                if hasattr(stage, name)]
    assert {"show_tensor", "show_gradient"} <= set(silenced), "the printouts this test switches off are there"
    for name in silenced:
        monkeypatch.setattr(stage, name, lambda *args: None)
    hidden = run_main(stage_name, tmp_path / "hidden", *extra)
    assert shown[0] == hidden[0], "the losses, in full precision"
    for name in shown[1]:
        assert np.array_equal(shown[1][name], hidden[1][name]), name


@pytest.mark.parametrize("stage_name", stages_from(9))
@pytest.mark.cuda
@cuda
def test_the_dropout_demonstration_on_a_gpu_leaves_its_random_state_alone(stage_name, capsys):
    model, x = net(stage_number(stage_name), dropout=0.0).to("cuda:0"), a_batch(4)[0].to("cuda:0")
    cpu_state, gpu_state = torch.get_rng_state(), torch.cuda.get_rng_state("cuda:0")
    load_stage(stage_name).show_train_and_eval_modes(model, x)
    assert "two eval-mode forwards are identical: True" in capsys.readouterr().out
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.cuda.get_rng_state("cuda:0"), gpu_state), "dropout on the GPU draws from the GPU's generator"


# ---------------------------------------------------------------- what every stage prints
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_every_stage_prints_its_teaching_points(stage_name, tmp_path, capsys):
    n = stage_number(stage_name)
    load_stage(stage_name).main(SMOKE + ["--max-steps", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "loss before any update" in out and "ln 10" in out
    assert "conv1.bias" in out and "after step 1" in out
    if n >= 2:
        assert "w.add(1) is w: False, w.add_(1) is w: True" in out
    if n >= 4:
        assert "(reduction='none')" in out and "their mean, the cost" in out
    if n >= 5:
        order = re.search(r"in named_parameters\(\) order: (.*)", out).group(1)
        assert re.findall(r"(\w+\.\w+) \d", order) == list(PARAM_NAMES), "weight then bias, layer by layer"
    if n >= 8:
        assert "two eval-mode forwards are identical: True" in out


def printed_gradient(stage_name: str, tmp_path, capsys) -> str:
    load_stage(stage_name).main(SMOKE + ["--dtype", "float64", "--max-steps", "1", "--out", str(tmp_path)])
    line = next(line for line in capsys.readouterr().out.splitlines() if "after step 1" in line)
    return line.split(": ", 1)[1]


@pytest.mark.stage3
def test_hand_written_and_autograd_gradients_print_the_same_numbers(tmp_path, capsys):
    """Stages 1-6 start from the same weights and batch: the gradient printed by stage 1's
    backward by hand is the one autograd puts in .grad in stages 3 and 6."""
    by_hand = printed_gradient("stages.stage01_numpy", tmp_path / "1", capsys)
    assert len(by_hand.split()) == 6
    assert printed_gradient("stages.stage03_autograd", tmp_path / "3", capsys) == by_hand
    assert printed_gradient("stages.stage06_optim", tmp_path / "6", capsys) == by_hand


@pytest.mark.stage6
def test_the_loss_before_any_update_is_near_ln_10_because_the_logits_are_small():
    x, y = a_batch(256, seed=3)
    with torch.no_grad():
        logits = net(6)(x)
    assert logits.abs().max() < 0.5, "small random weights: ten nearly equal logits"
    assert abs(F.cross_entropy(logits, y).item() - math.log(10)) < 0.05  # 'near': 2% of ln 10


# ---------------------------------------------------------------- stage 9: the device
@pytest.mark.stage9
def test_tensor_to_same_device_returns_itself():
    x = torch.zeros(2, 3)
    assert x.to("cpu") is x and x.to(x.device, x.dtype) is x
    assert x.to(torch.float64) is not x and x.dtype == torch.float32, "a copy, x untouched"
    assert x.to("cpu", copy=True) is not x


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_module_to_cuda_keeps_the_same_parameter_objects():
    model = load_stage(9).Net()
    before = list(model.parameters())
    assert model.to("cuda:0") is model
    assert all(p is q and p.is_cuda for p, q in zip(model.parameters(), before))


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_tensor_to_cuda_returns_a_copy_and_leaves_the_tensor_where_it_was():
    x = torch.zeros(2, 3)
    x_cuda = x.to("cuda:0")
    assert x_cuda is not x and x_cuda.is_cuda and not x.is_cuda
    assert x_cuda.to("cuda:0") is x_cuda


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_an_optimizer_built_before_moving_to_the_gpu_still_trains():
    early = net(9)  # float64: TF32 plays no part
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.to("cuda:0")
    late = net(9).to("cuda:0")
    train(early, early_optimizer)
    train(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    assert_same_parameters(early, late, bit_for_bit=False)


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_momentum_buffers_made_on_the_cpu_stay_there_when_the_model_moves():
    model = net(9)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, optimizer, steps=1)
    model.to("cuda:0")
    assert model.conv1.weight.is_cuda
    assert not optimizer.state[model.conv1.weight]["momentum_buffer"].is_cuda


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_optimizer_load_state_dict_puts_momentum_buffers_on_the_parameters_gpu():
    saved = net(9)
    saved_optimizer = optim.SGD(saved.parameters(), lr=0.01, momentum=0.9)
    train(saved, saved_optimizer, steps=1)
    model = net(9).to("cuda:0")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].is_cuda


@pytest.mark.stage9
@pytest.mark.cuda
@cuda
def test_the_loader_pins_its_batches_for_a_gpu_only():
    stage = load_stage(9)
    data = make_synthetic(0, n_train=8, n_test=8)
    args = stage_options(stage, ["--batch-size", "4"])
    for device, pinned in ((torch.device("cuda:0"), True), (torch.device("cpu"), False)):
        train_loader, _ = stage.make_loaders(data, args, device)
        x, y = next(iter(train_loader))
        assert x.is_pinned() == pinned and y.is_pinned() == pinned, device


# ---------------------------------------------------------------- stage 10: DataParallel
@pytest.mark.stage10
@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what DataParallel does with no GPU visible")
def test_dataparallel_with_no_gpu_visible_calls_the_module():
    model = net(10)
    wrapped = nn.DataParallel(model, device_ids=load_stage(10).gpus_starting_at(torch.device("cpu")))
    x = a_batch(4)[0]
    assert wrapped.device_ids == []
    assert torch.equal(wrapped(x), model(x))


@pytest.mark.stage10
def test_a_batch_forwarded_in_chunks_equals_one_forward_only_without_dropout_or_batchnorm():
    """What DataParallel does to a batch, scattering it in chunks and gathering the outputs,
    shown on one device: the same for this Net, not for dropout or BatchNorm."""
    x, y = a_batch(8)
    model = net(10, dropout=0.0)
    whole = model(x)
    chunks = torch.cat([model(chunk) for chunk in x.chunk(2)])
    assert same_to_round_off(chunks, whole)
    grads = [torch.autograd.grad(F.cross_entropy(out, y), model.fc3.weight)[0] for out in (whole, chunks)]
    assert same_to_round_off(grads[0], grads[1]), "the mean loss runs over the whole batch"
    model.dropout.p = 0.5
    torch.manual_seed(0)
    whole = model(x)
    torch.manual_seed(0)
    assert not same_to_round_off(torch.cat([model(chunk) for chunk in x.chunk(2)]), whole)
    norm = nn.BatchNorm1d(10).double().train()
    assert not same_to_round_off(torch.cat([norm(chunk) for chunk in whole.detach().chunk(2)]), norm(whole.detach()))


@pytest.mark.stage10
@pytest.mark.cuda
@cuda
@two_gpus
def test_dataparallel_equals_one_forward_only_without_dropout():
    x = a_batch(8)[0].to("cuda:0")
    plain = net(10, dropout=0.0).to("cuda:0")
    wrapped = nn.DataParallel(net(10, dropout=0.0).to("cuda:0"), device_ids=[0, 1])
    assert same_to_round_off(wrapped(x), plain(x))
    plain.dropout.p = wrapped.module.dropout.p = 0.5
    torch.manual_seed(0)
    one = plain(x)
    torch.manual_seed(0)
    assert not same_to_round_off(wrapped(x), one), "each replica draws its own masks"


@pytest.mark.stage10
@pytest.mark.cuda
@cuda
@two_gpus
def test_dataparallel_refuses_a_model_that_is_not_on_device_ids_0():
    x = a_batch(4)[0].to("cuda:1")
    model = net(10).to("cuda:1")
    with pytest.raises(RuntimeError, match=r"device_ids\[0\]"):
        nn.DataParallel(model)(x)
    assert nn.DataParallel(model, device_ids=load_stage(10).gpus_starting_at(torch.device("cuda:1")))(x).is_cuda


@pytest.mark.stage10
@pytest.mark.cuda
@cuda
def test_a_state_dict_saved_from_a_gpu_loads_onto_the_gpu_unless_mapped_to_the_cpu(tmp_path):
    torch.save(net(10).to("cuda:0").state_dict(), tmp_path / "gpu.pt")
    assert torch.load(tmp_path / "gpu.pt", weights_only=True)["fc3.bias"].is_cuda
    assert not torch.load(tmp_path / "gpu.pt", weights_only=True, map_location="cpu")["fc3.bias"].is_cuda


@pytest.mark.stage10
@pytest.mark.cuda
@cuda
def test_the_records_model_pt_holds_cpu_tensors_after_a_gpu_run(tmp_path):
    summary = load_stage(10).main(SMOKE + ["--device", "cuda", "--max-steps", "2", "--out", str(tmp_path)])
    state = torch.load(f"{summary['record']}/model.pt", weights_only=True)
    assert all(not value.is_cuda for value in state.values())


# ---------------------------------------------------------------- stage 11: DistributedDataParallel
@pytest.mark.stage11
def test_distributed_sampler_pads_by_repeating_samples():
    dataset, processes = list(range(10)), 3
    shares = [list(DistributedSampler(dataset, num_replicas=processes, rank=r, shuffle=True, seed=0))
              for r in range(processes)]
    assert [len(s) for s in shares] == [4, 4, 4], "ceil(10 / 3) each"
    order = [i for step in zip(*shares) for i in step]  # rank r takes every 3rd index from r
    assert sorted(set(order)) == dataset, "every image is seen ..."
    assert order[10:] == order[:2], "... and the first two of the shuffled order twice"


@pytest.mark.stage11
def test_set_epoch_reshuffles_alike_on_every_process():
    dataset = list(range(12))

    def shares(epoch):
        samplers = [DistributedSampler(dataset, num_replicas=2, rank=r, seed=0) for r in range(2)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(s) for s in samplers]

    assert shares(1) == shares(1), "same seed and epoch: same order, on every process"
    assert shares(1) != shares(2)
    assert sorted(shares(2)[0] + shares(2)[1]) == dataset, "the shares split one permutation"


@pytest.mark.stage11
def test_equal_shares_average_to_the_whole_batch_gradient_but_unequal_ones_do_not():
    x, y = a_batch(8)
    model = net(11)

    def gradient(batches):
        grads = [torch.autograd.grad(F.cross_entropy(model(xs), ys), model.fc3.weight)[0] for xs, ys in batches]
        return sum(grads) / len(grads)  # what DDP's all-reduce makes of them

    whole = gradient([(x, y)])
    assert same_to_round_off(gradient([(x[:4], y[:4]), (x[4:], y[4:])]), whole)
    assert not same_to_round_off(gradient([(x[:6], y[:6]), (x[6:], y[6:])]), whole)


def ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """One process as stage 11's main() sets it up: its weights made differently on purpose."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stage = load_stage(11)
        model = stage.Net(0.5).double()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(rank + 1)
        model = nn.parallel.DistributedDataParallel(model)
        seed_everything(0)  # as main() does, with --seed 0 on every process
        alike = model(torch.ones(1, 3, 32, 32, dtype=torch.float64) / 100)
        seed_everything(rank)  # a seed per process
        apart = model(torch.ones(1, 3, 32, 32, dtype=torch.float64) / 100)
        weights = model.module.fc3.bias.detach()
        torch.save({"alike": alike.detach(), "apart": apart.detach(), "weights": weights}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp_claims")
    mp.start_processes(ddp_worker, args=(free_port(), str(out_dir)), nprocs=2, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.stage11
def test_ddp_copies_rank_0s_parameters_to_every_process(two_ranks):
    assert torch.equal(two_ranks[1]["weights"], two_ranks[0]["weights"])
    assert two_ranks[0]["weights"].tolist() == [1.0] * 10, "rank 0's own weights"


@pytest.mark.stage11
def test_every_rank_seeded_alike_draws_the_same_dropout_masks(two_ranks):
    assert torch.equal(two_ranks[0]["alike"], two_ranks[1]["alike"])
    assert not torch.equal(two_ranks[0]["apart"], two_ranks[1]["apart"]), "a seed per rank: masks of their own"
