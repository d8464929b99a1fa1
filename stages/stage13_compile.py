"""Stage 13: torch.compile turns the model's forward and backward into fused, generated kernels.

Changes from stage 12:
- `model.compile()` before the DDP wrap, as PyTorch's documentation advises: at the first call,
  TorchDynamo traces the forward, AOTAutograd derives the backward, and inductor generates and
  compiles kernels for both (C++ on a CPU, Triton on a GPU); later steps reuse them.
- So the first step takes seconds: the stage prints its time and the speed of the steps after
  it. Evaluation (no gradients, another batch size) compiles once more.
- `--compile on` is the default here; `--compile off` is stage 12 exactly. Without a C++
  compiler the stage says so and runs eager.

Run: python -m stages.stage13_compile --epochs 1
"""
import os
import shutil
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn, optim
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms
from tqdm import tqdm

from common.cli import non_negative_int, parse_args, probability, process_device_name
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000
TIMED_STEPS = 50  # the steps after the first whose mean time is printed


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


def make_loaders(data, args, device, rank):
    transform = make_transform(DTYPES[args.dtype])
    train_set = ArrayDataset(data.train_x, data.train_y, transform)
    test_set = ArrayDataset(data.test_x, data.test_y, transform)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)  # this process's share
    # every world_size-th test image from this rank's: each image exactly once over all processes
    test_set = Subset(test_set, range(rank, len(test_set), dist.get_world_size()))
    pin_memory = device.type == "cuda"  # page-locked batches can be copied to the GPU asynchronously
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                              num_workers=args.workers, pin_memory=pin_memory)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=args.workers, pin_memory=pin_memory)
    return train_loader, test_loader, sampler


# ---------------------------------------------------------------- training and evaluation
def show_first_step(loss, conv1_bias_grad):
    """Step 1's loss and conv1's bias gradient: every stage prints the same numbers, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten logits "
               "nearly equal); conv1.bias gradient: " + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def show_compile_time(step, loss, seconds):
    """How long step 1 took (tracing and compiling) and then each of the TIMED_STEPS after it."""
    if step == 1:
        tqdm.write(f"step 1 took {seconds:.1f}s: torch.compile traced the forward and backward and compiled them "
                   "(or found them in inductor's cache, from an earlier run)")
    else:
        loss.item()  # wait until the device has computed this step: then the time is the steps' own
        tqdm.write(f"steps 2-{step} took {1000 * seconds / TIMED_STEPS:.2f} ms each, compiled")


def train_one_epoch(model, device, train_loader, criterion, optimizer, autocast, scaler, args, run):
    model.train()  # dropout on
    clock = time.perf_counter()
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # a copy unless already there
        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did
        with autocast:  # the forward and the loss, each op in the dtype autocast chooses for it
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()  # outside autocast: the backward runs in the dtypes of the forward
        scaler.step(optimizer)
        scaler.update()
        run.log_step(loss, model)  # the progress bar; losses.csv, grad_norms.csv (read every 50 steps)
        if run.steps == 1 and run.main_process:  # only rank 0 prints
            show_first_step(loss, model.module.conv1.bias.grad)  # tqdm.write prints above the progress bar
        if run.steps in (1, 1 + TIMED_STEPS) and run.main_process and args.compile == "on":
            show_compile_time(run.steps, loss, time.perf_counter() - clock)
            clock = time.perf_counter()
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, device, test_loader, autocast):
    """How many test images the model classifies correctly, over the shares of all processes."""
    model.eval()  # dropout off: every prediction uses the whole network
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in test_loader:  # this process's share of the test set
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        correct += (logits.argmax(dim=1) == y).sum()
    dist.all_reduce(correct)  # the sum over every process, on every process
    return correct.item()


def autocast_dtype(device):
    """bfloat16, which every CPU and recent GPUs compute in; float16 on a GPU without it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def can_compile(device):
    """inductor writes C++ for a CPU, so a CPU run needs a C++ compiler ($CXX, g++ or clang++)."""
    compilers = [os.environ.get("CXX", ""), "g++", "clang++"]
    return device.type != "cpu" or any(shutil.which(c) for c in compilers if c)


def choose_device(name):
    """auto or cuda: this process's GPU, cuda:LOCAL_RANK, if there are GPUs; else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


@contextmanager
def process_group(device):
    """Join torchrun's process group (or make a group of one process), and leave it at the end."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so that NCCL's own work for this process lands on its GPU
    if "RANK" in os.environ:  # started by torchrun, which describes the group in the environment
        dist.init_process_group(backend)
    else:  # plain python: a group of one, whose rendezvous store lives in this process
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def add_options(parser):
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: the main process)")
    parser.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout before fc2 and fc3 (0: none)")
    parser.add_argument("--amp", choices=("on", "off"), default="on",
                        help="autocast the forward and the loss (float32 only)")
    parser.add_argument("--compile", choices=("on", "off"), default="on",
                        help="torch.compile the model")
    parser.add_argument("--device", type=process_device_name, default="auto",
                        help="auto, cpu or cuda (both cuda:LOCAL_RANK), cuda:N")


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, add_options)
    rank = int(os.environ.get("RANK", "0"))  # this process's number, from torchrun (0 under plain python)
    main_process = rank == 0  # the one that prints and writes
    with StageRun(__file__, args, main_process=main_process) as run:
        seed_everything(args.seed + rank)  # each process draws its own dropout masks
        device = choose_device(args.device)
        with process_group(device):
            if main_process:
                print(f"device: {device}, DistributedDataParallel over {dist.get_world_size()} process(es)")
            data = load_data(args.data, args.data_dir, args.seed, announce=main_process, verbose=args.verbose)
            model = Net(args.dropout).to(device=device, dtype=DTYPES[args.dtype])  # in place
            model.load_state_dict({name: torch.from_numpy(value) for name, value in reference_params(args.seed).items()})
            if args.compile == "on" and not can_compile(device):
                print("torch.compile: no C++ compiler found (inductor needs one on a CPU): running eager")
                args.compile = "off"  # as if asked: the loop then prints no compile times either
            if args.compile == "on":
                model.compile()  # in place: from its first call on, forward runs through torch.compile
            model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
            raw_model = model.module  # the Net itself: what to save, load and evaluate
            criterion = nn.CrossEntropyLoss()
            optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
            use_amp = args.amp == "on" and args.dtype == "float32"  # float64 is for checking round-off
            amp_dtype = autocast_dtype(device)
            autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
            scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
            train_loader, test_loader, sampler = make_loaders(data, args, device, rank)
            first_epoch = run.resume(raw_model, optimizer, scaler)  # the run's state: --checkpoint, --resume
            for epoch in range(first_epoch, args.epochs + 1):
                sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
                run.start_epoch(epoch, steps=len(train_loader))
                train_one_epoch(model, device, train_loader, criterion, optimizer, autocast, scaler, args, run)
                correct = evaluate(raw_model, device, test_loader, autocast)
                run.end_epoch(correct, data)  # prints the test accuracy
                if run.steps == args.max_steps:
                    break
            run.save_params(raw_model.state_dict())  # keys without "module."
    return run.summary


if __name__ == "__main__":
    main()
