"""Stage 3's claims (autograd), each shown by running it."""
from __future__ import annotations

import pytest
import torch

from common.harness import driver, load_stage
from tests.helpers import STAGES, a_batch, has_hand_written_gradients, reference_net, run_main, tiny, uses_dataloader


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
    for _ in range(3):
        (params["w"] * 2).sum().backward()
    assert params["w"].grad.tolist() == [6.0], "three backward() calls: every earlier one's 2 is still there"
    stage.zero_grad(params)
    assert params["w"].grad is None
    (params["w"] * 2).sum().backward()
    assert params["w"].grad.tolist() == [2.0]


def printed_gradient(stage_name: str, tmp_path, data_dir) -> str:
    out = run_main(stage_name, tmp_path, "--dtype", "float64", "--epochs", "1", "--max-steps", "1", preset=tiny(data_dir)).out
    line = next(line for line in out.splitlines() if line.startswith("step 1: loss"))
    return line.split("conv1.bias gradient: ", 1)[1]


@pytest.mark.stage3
def test_hand_written_and_autograd_gradients_print_the_same_numbers(tmp_path, tiny_data):
    """The stages that shuffle with numpy start from the same weights and batch: the gradient
    printed by the first stage's backward by hand is the one autograd puts in .grad, in the
    first stage with autograd and in the last stage before the DataLoader."""
    numpy_order = [name for name in STAGES if not uses_dataloader(load_stage(name))]
    by_hand = next(name for name in numpy_order if has_hand_written_gradients(load_stage(name)))
    first_autograd = next(name for name in numpy_order if driver(name).family == "autograd")
    printed = printed_gradient(by_hand, tmp_path / "by hand", tiny_data)
    assert len(printed.split()) == 6, "conv1's six biases"
    for name in (first_autograd, numpy_order[-1]):
        assert printed_gradient(name, tmp_path / name, tiny_data) == printed, name


@pytest.mark.stage3
def test_autograd_computes_no_gradient_for_the_images_so_conv1s_backward_stops_at_its_weights():
    """The images do not require a gradient, so conv1's backward computes its weight and bias
    gradients only: a training step costs 3 forwards less conv1's forward (make bench's FLOP count)."""
    import warnings

    model, (x, y) = reference_net(6), a_batch(4)
    inputs_grads = {}

    def note(name):
        def hook(module, grad_input, grad_output):  # called with the gradients of the layer's input
            inputs_grads[name] = grad_input[0]
        return hook

    for name in ("conv1", "conv2"):
        getattr(model, name).register_full_backward_hook(note(name))
    with warnings.catch_warnings():  # it warns, rightly, that conv1's input requires no gradient
        warnings.simplefilter("ignore", UserWarning)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert not x.requires_grad and inputs_grads["conv1"] is None, "no gradient for the images"
    assert inputs_grads["conv2"].shape == (4, 6, 14, 14), "conv2's input gradient, for conv1's weights"
    assert model.conv1.weight.grad is not None
