"""Stage 10's claims (DataParallel), each shown by running it: on one device where that shows the
claim, on two GPUs (marked `cuda`, skipped elsewhere) where only they can."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.harness import driver, load_stage, sample_batches, trajectory
from tests.helpers import (a_batch, assert_close, assert_differs, needs_gpus, pretend_gpus, reference_net, run_main)


@pytest.mark.stage10
@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what DataParallel does with no GPU visible")
def test_dataparallel_with_no_gpu_visible_calls_the_module():
    model = reference_net(10)
    wrapped = nn.DataParallel(model, device_ids=load_stage(10).gpus_starting_at(torch.device("cpu")))
    x = a_batch(4)[0]
    assert wrapped.device_ids == []
    assert torch.equal(wrapped(x), model(x))


@pytest.mark.stage10
def test_a_batch_forwarded_in_chunks_equals_one_forward_only_without_dropout_or_batchnorm():
    """What DataParallel does to a batch, scattering it in chunks and gathering the outputs,
    shown on one device: the same for this Net, not for dropout or BatchNorm."""
    x, y = a_batch(8)
    model = reference_net(10, dropout=0.0)
    whole = model(x)
    chunks = torch.cat([model(chunk) for chunk in x.chunk(2)])
    assert_close(chunks, whole, "float64", "logits of two chunks")
    grads = [torch.autograd.grad(F.cross_entropy(out, y), model.fc3.weight)[0] for out in (whole, chunks)]
    assert_close(grads[1], grads[0], "float64", "the mean loss runs over the whole batch")
    model.dropout.p = 0.5
    torch.manual_seed(0)
    whole = model(x)
    torch.manual_seed(0)
    assert_differs(torch.cat([model(chunk) for chunk in x.chunk(2)]), whole, "float64", "chunks with dropout")
    norm = nn.BatchNorm1d(10).double().train()
    assert_differs(torch.cat([norm(chunk) for chunk in whole.detach().chunk(2)]), norm(whole.detach()), "float64",
                   "chunks through BatchNorm")


@pytest.mark.stage10
def test_dataparallel_device_ids_start_at_the_models_gpu(monkeypatch):
    """DataParallel keeps the parameters on device_ids[0] and gathers there: with the model on
    cuda:1, device_ids must begin with 1 (its default, every GPU in order, begins with 0)."""
    pretend_gpus(monkeypatch, 3)
    stage = load_stage(10)
    assert stage.gpus_starting_at(torch.device("cuda:1")) == [1, 0, 2]
    assert stage.gpus_starting_at(torch.device("cuda:0")) == [0, 1, 2]


@pytest.mark.stage10
def test_dataparallel_prefixes_the_state_dict_but_not_the_canonical_names(params):
    d = driver(10)
    model = d.build(params, wrap="data_parallel")
    assert isinstance(model.net, nn.DataParallel)
    assert all(key.startswith("module.") for key in model.net.state_dict())
    assert list(d.get_params(model)) == list(params)
    assert list(model.net.module.state_dict()) == list(params)


@pytest.mark.stage10
def test_dataparallel_computes_what_the_plain_module_computes(params):
    batches = sample_batches(5, 4, seed=4)
    plain = trajectory(load_stage(10), params, batches, "float64")
    wrapped = trajectory(load_stage(10), params, batches, "float64", wrap="data_parallel")
    assert_close(wrapped["params"], plain["params"], "float64", "parameters after 5 steps")


@pytest.mark.stage10
def test_a_run_saves_weights_that_load_into_a_plain_net(tmp_path):
    record = run_main(10, tmp_path, "--max-steps", "5", "--data-parallel").record
    state = torch.load(record / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state)
    net = load_stage(10).Net()
    net.load_state_dict(state)  # raises on any missing or unexpected key


@pytest.mark.stage10
@needs_gpus(2)
def test_dataparallel_equals_one_forward_only_without_dropout():
    x = a_batch(8)[0].to("cuda:0")
    plain = reference_net(10, dropout=0.0).to("cuda:0")
    wrapped = nn.DataParallel(reference_net(10, dropout=0.0).to("cuda:0"), device_ids=[0, 1])
    assert_close(wrapped(x), plain(x), "float64", "logits")
    plain.dropout.p = wrapped.module.dropout.p = 0.5
    torch.manual_seed(0)
    one = plain(x)
    torch.manual_seed(0)
    assert_differs(wrapped(x), one, "float64", "chunked, the masks are not the whole batch's")


@pytest.mark.stage10
def test_torch_manual_seed_seeds_every_gpu_alike(monkeypatch):
    """torch.manual_seed(s) also calls torch.cuda.manual_seed_all(s): one seed for every GPU's
    generator. So DataParallel's replicas, each drawing from its own GPU's generator, start alike."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    torch.manual_seed(7)
    assert seeded == [7]


@pytest.mark.stage10
@needs_gpus(2)
def test_equal_chunks_on_equally_seeded_gpus_draw_the_same_dropout_masks():
    """What the seed above means for stage 10: two replicas, one seed, equal chunks, equal masks
    (stage 11 seeds each process with --seed + rank instead)."""
    x = a_batch(1)[0].repeat(8, 1, 1, 1).to("cuda:0")  # one image, eight times: the chunks are equal
    wrapped = nn.DataParallel(reference_net(10, dropout=0.5).to("cuda:0"), device_ids=[0, 1])
    torch.manual_seed(0)
    out = wrapped(x)
    assert torch.equal(out[:4].cpu(), out[4:].cpu()), "cuda:0's chunk and cuda:1's: the same masks"
    assert not torch.equal(out[0], out[1]), "within a chunk, each image its own mask"


@pytest.mark.stage10
@needs_gpus(2)
def test_dataparallel_refuses_a_model_that_is_not_on_device_ids_0():
    x = a_batch(4)[0].to("cuda:1")
    model = reference_net(10).to("cuda:1")
    with pytest.raises(RuntimeError, match=r"device_ids\[0\]"):
        nn.DataParallel(model)(x)
    assert nn.DataParallel(model, device_ids=load_stage(10).gpus_starting_at(torch.device("cuda:1")))(x).is_cuda


@pytest.mark.stage10
@needs_gpus(1)
def test_a_state_dict_saved_from_a_gpu_loads_onto_the_gpu_unless_mapped_to_the_cpu(tmp_path):
    torch.save(reference_net(10).to("cuda:0").state_dict(), tmp_path / "gpu.pt")
    assert torch.load(tmp_path / "gpu.pt", weights_only=True)["fc3.bias"].is_cuda
    assert not torch.load(tmp_path / "gpu.pt", weights_only=True, map_location="cpu")["fc3.bias"].is_cuda


@pytest.mark.stage10
@needs_gpus(1)
def test_the_records_model_pt_holds_cpu_tensors_after_a_gpu_run(tmp_path):
    record = run_main(10, tmp_path, "--device", "cuda", "--max-steps", "2").record
    state = torch.load(record / "model.pt", weights_only=True)
    assert all(not value.is_cuda for value in state.values())
