"""Stage 12's claims (mixed precision: torch.autocast, torch.amp.GradScaler), each shown by running
it on the CPU, where autocast computes in bfloat16. Stage 12's equivalence with stage 11 (--amp
off) and with float32 (a bfloat16 tolerance) lives in tests/equivalence/."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import a_batch, reference_net

pytestmark = pytest.mark.stage12


def test_autocast_runs_the_layers_in_bfloat16_and_the_loss_in_float32():
    model, (x, y) = reference_net(12, "float32"), a_batch(4, dtype="float32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.CrossEntropyLoss()(logits, y)
        assert model.conv1(x).dtype == model.fc1(torch.zeros(1, 400)).dtype == torch.bfloat16
    assert logits.dtype == torch.bfloat16, "convolutions and matrix products: bfloat16"
    assert loss.dtype == torch.float32, "cross-entropy is on autocast's float32 list"


def test_the_weights_their_gradients_and_the_step_stay_float32():
    model, (x, y) = reference_net(12, "float32"), a_batch(4, dtype="float32")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()  # outside autocast: each op's backward in the dtype its forward ran in
    optimizer.step()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].dtype == torch.float32


def test_autocast_leaves_float64_alone():
    """Autocast casts float32 tensors only, so a float64 run would stay float64 even under it
    (the stage does not even enter autocast then: --dtype float64 is for checking round-off)."""
    model, (x, _) = reference_net(12, "float64"), a_batch(4, dtype="float64")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.float64


def test_bfloat16_has_float32s_range_and_fewer_digits():
    """8 exponent bits like float32, so the same range; 8 significant bits where float32 has 24."""
    bf16, f32, f16 = torch.finfo(torch.bfloat16), torch.finfo(torch.float32), torch.finfo(torch.float16)
    assert bf16.max == pytest.approx(f32.max, rel=0.01) and bf16.tiny == f32.tiny
    assert bf16.eps == 2.0**-7 and f32.eps == 2.0**-23
    assert f16.max == 65504 and f16.tiny == 2.0**-14, "float16: a small range, hence the GradScaler"


def test_a_disabled_grad_scaler_passes_the_loss_and_the_step_through():
    """With bfloat16 the stage's scaler is disabled: scale() returns the loss itself and step()
    is optimizer.step()."""
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = torch.tensor(2.5)
    assert scaler.scale(loss) is loss
    x, y = a_batch(4, dtype="float32")
    stepped = []
    for step in (scaler.step, lambda optimizer: optimizer.step()):  # the same SGD code both times
        model = reference_net(12, "float32")
        F.cross_entropy(model(x), y).backward()
        step(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        stepped.append(model.state_dict())
    assert all(torch.equal(stepped[0][name], stepped[1][name]) for name in stepped[0])
