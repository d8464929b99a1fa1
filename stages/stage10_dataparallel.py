"""Stage 10: nn.DataParallel spreads each batch over all visible GPUs.

Changes from stage 9:
- With a GPU chosen and more than one visible (or on request with --data-parallel), the model
  is wrapped: `model = nn.DataParallel(model, device_ids=gpus_starting_at(device))`, after
  `.to(device)` and before the optimizer is built. DataParallel requires the parameters on
  device_ids[0], so the list starts at the model's GPU (the default, every GPU in order,
  starts at cuda:0 and would refuse a model on cuda:1). On every forward, DataParallel
  scatters the batch into one chunk per GPU, replicates the module onto each GPU, runs the
  chunks in parallel threads, and gathers the outputs on device_ids[0]; the backward runs
  through the replicas and sums their gradients into the parameters on device_ids[0], where
  the optimizer steps. The loss is computed on the gathered outputs, a mean over the whole
  batch, so for this network a step equals one big forward and backward on one device, to
  round-off. Not so with dropout (each replica draws its own masks, from its own GPU's
  generator) or BatchNorm (each chunk is normalised with its own statistics). With no GPU
  visible, DataParallel simply calls the module.
- The wrapper holds the network as `model.module`, so the keys of `model.state_dict()` gain
  a `module.` prefix, and `show_gradient` looks inside the wrapper for `conv1`. Save and load
  through the unwrapped module, `raw_model`, so that a checkpoint or the record's model.pt
  loads into a plain `Net` (and vice versa): `Net().load_state_dict(torch.load(path,
  weights_only=True))`. The record's model.pt holds copies of the tensors on the CPU, so it
  loads on any machine; a state_dict saved straight from a model on a GPU keeps that device,
  and a machine without the GPU loads it with `torch.load(path, map_location="cpu")`.
- PyTorch recommends `DistributedDataParallel` instead, even on one machine: DataParallel is
  one process driving all GPUs from Python threads, which contend for the GIL; it copies the
  whole module to every GPU on every step; and it gathers the outputs and reduces the
  gradients on device_ids[0], which can make that GPU the bottleneck. DDP runs one process
  per GPU and overlaps an all-reduce of the gradients with the backward (stage 11).

Run: python -m stages.stage10_dataparallel --epochs 1 [--data-parallel]
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import transforms
from torchvision.datasets import CIFAR10
from tqdm import tqdm

from common.cli import device_name, non_negative_int, parse_args, probability
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
class Net(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.dropout = nn.Dropout(dropout)  # a no-op in eval mode, and at p = 0

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))  # (N, 6, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)  # (N, 400)
        x = self.dropout(F.relu(self.fc1(x)))  # (N, 120)
        x = self.dropout(F.relu(self.fc2(x)))  # (N, 84)
        return self.fc3(x)  # (N, 10)


def show_tensor(name, t):
    """A tensor's dtype, device and shape, and what a trailing _ means, shown on a copy of it."""
    w = t.clone()  # a copy: the demonstration leaves the weights alone
    print(f"{name}: {t.dtype} on {t.device}, shape {tuple(t.shape)}; w.add(1) is w: {w.add(1) is w}, "
          f"w.add_(1) is w: {w.add_(1) is w} (a trailing _ changes the tensor in place)")


# ---------------------------------------------------------------- loss and step
@torch.no_grad()
def show_loss_and_cost(model, criterion, x, y):
    """One loss per image (reduction="none"), and their mean: what the criterion returns."""
    model.eval()  # dropout off, as in evaluate(): no random numbers drawn; train_one_epoch() turns it on
    logits = model(x)
    losses = nn.CrossEntropyLoss(reduction="none")(logits, y)  # (N,)
    each = " ".join(f"{v:.4f}" for v in losses.tolist())
    print(f"loss of each of {len(y)} test images (reduction='none'): {each}; their mean, the cost: "
          f"{losses.mean():.4f}; criterion(logits, y): {criterion(logits, y):.4f}")


# ---------------------------------------------------------------- data
def make_transform(dtype):
    """The tutorial's transform, then --dtype: ToTensor() makes torch's default dtype, float32."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                               transforms.ConvertImageDtype(dtype)])


class ArrayDataset(Dataset):
    """uint8 images (N, 32, 32, 3) and labels as a Dataset, transformed like torchvision's CIFAR10."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def make_loaders(data, args, device):
    transform = make_transform(DTYPES[args.dtype])
    if data.root is not None:  # the data came through torchvision: use its Dataset
        train_set = CIFAR10(data.root, train=True, transform=transform)
        test_set = CIFAR10(data.root, train=False, transform=transform)
    else:
        train_set = ArrayDataset(data.train_x, data.train_y, transform)
        test_set = ArrayDataset(data.test_x, data.test_y, transform)
    generator = torch.Generator().manual_seed(args.seed)  # the shuffle order follows --seed
    pin_memory = device.type == "cuda"  # page-locked batches can be copied to the GPU asynchronously
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=generator,
                              num_workers=args.workers, pin_memory=pin_memory)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=args.workers, pin_memory=pin_memory)
    return train_loader, test_loader


# ---------------------------------------------------------------- training and evaluation
def show_gradient(model):
    """The gradients after the first step, where autograd put them: in each parameter's .grad."""
    model = model.module if isinstance(model, nn.DataParallel) else model  # the Net inside the wrapper
    tqdm.write("model.conv1.bias.grad after step 1, by loss.backward(): "
               + " ".join(f"{g:+.4e}" for g in model.conv1.bias.grad.tolist()))
    tqdm.write("norm of each .grad, in named_parameters() order: "
               + ", ".join(f"{name} {p.grad.norm():.3e}" for name, p in model.named_parameters()))


def train_one_epoch(model, device, train_loader, criterion, optimizer, args, run):
    model.train()  # dropout on
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # a copy unless already there
        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        run.log_step(loss.item(), model)  # the progress bar; the loss and each layer's p.grad norm, on disk
        if run.steps == 1:
            show_gradient(model)  # tqdm.write prints above the progress bar
        if run.steps == args.max_steps:
            return


@torch.no_grad()
def show_train_and_eval_modes(model, x):
    """Dropout 0.5 in a throw-away copy of the model: two train-mode forwards of one batch
    differ, two eval-mode forwards agree. fork_rng() puts the random state back afterwards,
    so the run draws exactly the numbers it would draw without this."""
    probe = copy.deepcopy(model)
    probe.dropout.p = 0.5
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):  # the CPU's and x's GPU's
        probe.train()
        first, second = probe(x), probe(x)
        probe.eval()
        third, fourth = probe(x), probe(x)
    print(f"a copy with dropout 0.5: two train-mode forwards of one batch differ by up to "
          f"{(first - second).abs().max():.4f}, two eval-mode forwards are identical: "
          f"{torch.equal(third, fourth)} (this run's --dropout: {model.dropout.p})")


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, device, test_loader):
    """The predicted class of every test image: the one with the highest logit."""
    model.eval()  # dropout off: every prediction uses the whole network
    predicted = []
    for x, _ in test_loader:
        predicted.append(model(x.to(device, non_blocking=True)).argmax(dim=1))
    return torch.cat(predicted)


def choose_device(name):
    """auto: the first GPU if there is one, else the CPU; cuda: the first GPU. (common/cli.py has
    already refused a GPU that is not there.)"""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda:0" if name == "cuda" else name)


def gpus_starting_at(device):
    """Every visible GPU, the model's own first: DataParallel requires the parameters on
    device_ids[0] and gathers the outputs there. (With no GPU visible it ignores the list.)"""
    return [device.index] + [i for i in range(torch.cuda.device_count()) if i != device.index]


def add_options(parser):
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: load in the main process)")
    parser.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout probability before fc2 and fc3 (0: the reference network)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    parser.add_argument("--data-parallel", action="store_true",
                        help="wrap the model in nn.DataParallel even with one GPU or none")


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, add_options)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        device = choose_device(args.device)
        data_parallel = args.data_parallel or (device.type == "cuda" and torch.cuda.device_count() > 1)
        print(f"device: {device}" + (", wrapped in nn.DataParallel" if data_parallel else ""))
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        model = Net(args.dropout).to(device=device, dtype=DTYPES[args.dtype])  # in place
        model.load_state_dict({name: torch.from_numpy(value) for name, value in reference_params(args.seed).items()})
        print(f"model: {len(list(model.parameters()))} parameter tensors, "
              f"{sum(p.numel() for p in model.parameters()):,} numbers")  # weight and bias of 5 layers
        if data_parallel:  # after .to(device), before the optimizer
            model = nn.DataParallel(model, device_ids=gpus_starting_at(device))
        raw_model = model.module if data_parallel else model  # the Net itself: what to save and load
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        train_loader, test_loader = make_loaders(data, args, device)
        first_epoch = run.resume(raw_model, optimizer, train_loader.generator)  # the run's state: --checkpoint, --resume
        show_tensor("conv1.weight", raw_model.conv1.weight)
        x, y = default_collate([test_loader.dataset[i] for i in range(4)])  # 4 samples, one batch
        x, y = x.to(device), y.to(device)
        show_loss_and_cost(model, criterion, x, y)
        show_train_and_eval_modes(raw_model, x)
        for epoch in range(first_epoch, args.epochs + 1):
            run.start_epoch(epoch, steps=len(train_loader))
            train_one_epoch(model, device, train_loader, criterion, optimizer, args, run)
            run.end_epoch(evaluate(model, device, test_loader), data)  # prints the test accuracy
            if run.steps == args.max_steps:
                break
        run.save_params(raw_model.state_dict())  # keys without "module."
    return run.summary


if __name__ == "__main__":
    main()
