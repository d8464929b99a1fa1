"""Stage 12: mixed precision: the forward and the loss run under autocast, in bfloat16.

Changes from stage 11:
- `with autocast:` around `criterion(model(x), y)`: convolutions and matrix products in bfloat16
  (float32's range, half its bits), the loss in float32; the weights and the step stay float32.
- `torch.amp.GradScaler` scales the loss before `backward()`; it acts only with float16 (GPUs
  without bfloat16), whose small range would round tiny gradients to zero.
- `--amp off` is stage 11 exactly; a float64 run never autocasts.

Run: python -m stages.stage12_amp --epochs 1
"""
import os

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
    return transforms.Compose([transforms.ToTensor(),
                               transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                               transforms.ConvertImageDtype(dtype)])


class ArrayDataset(Dataset):
    """uint8 images (N, 32, 32, 3) and their labels, transformed as torchvision's CIFAR10 does."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def make_loaders(data, args, device):
    transform = make_transform(DTYPES[args.dtype])
    train_set = ArrayDataset(data.train_x, data.train_y, transform)
    test_set = ArrayDataset(data.test_x, data.test_y, transform)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)  # this process's share
    # every world_size-th test image from this rank's: each image exactly once over all processes
    test_set = Subset(test_set, range(dist.get_rank(), len(test_set), dist.get_world_size()))
    pin_memory = device.type == "cuda"  # page-locked: the copies to the GPU can be queued
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                              num_workers=args.workers, pin_memory=pin_memory)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=args.workers,
                             pin_memory=pin_memory)
    return train_loader, test_loader, sampler


# ---------------------------------------------------------------- training and evaluation
def show_first_step(loss, conv1_bias_grad):
    """Step 1's loss and conv1's bias gradient: the same numbers in every stage, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten "
               "logits nearly equal); conv1.bias gradient: "
               + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def train_one_epoch(model, device, train_loader, criterion, optimizer, autocast, scaler, args, run):
    model.train()  # dropout on
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # to the device
        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did
        with autocast:  # the forward and the loss, each op in the dtype autocast chooses for it
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()  # outside autocast: each op's backward in its forward's dtype
        scaler.step(optimizer)
        scaler.update()
        run.log_step(loss)
        if run.steps == 1 and run.main_process:  # only rank 0 prints
            show_first_step(loss, model.module.conv1.bias.grad)
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, device, test_loader, autocast):
    """How many test images are classified correctly, over the shares of all processes."""
    model.eval()  # dropout off: every prediction uses the whole network
    correct = torch.zeros((), dtype=torch.int64, device=device)  # a tensor, to all-reduce
    for x, y in test_loader:  # this process's share of the test set
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        predicted = logits.argmax(dim=1)  # the class with the highest logit
        correct += (predicted == y).sum()
    dist.all_reduce(correct)  # the sum over every process, on every process
    return correct.item()


def autocast_dtype(device):
    """bfloat16, which every CPU and recent GPUs compute in; float16 on a GPU without it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def choose_device(name):
    """auto: the accelerator if any, else the CPU; with no number: this process's, LOCAL_RANK."""
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        name = accelerator.type if accelerator is not None else "cpu"
    if name == "cpu" or ":" in name:
        return torch.device(name)
    return torch.device(name, int(os.environ.get("LOCAL_RANK", "0")))


def join_process_group(device):
    """The group torchrun describes in the environment, or without torchrun a group of one."""
    backend = dist.get_default_backend_for_device(device)  # nccl for CUDA, gloo for the CPU
    if device.type != "cpu":
        torch.accelerator.set_device_index(device)  # so that NCCL's work lands on this GPU
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group(backend)
    else:  # plain python: a group of this process alone, its meeting point in memory
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def add_options(parser):
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: the main process)")
    parser.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout before fc2 and fc3 (0: none)")
    parser.add_argument("--amp", choices=("on", "off"), default="on",
                        help="autocast the forward and the loss (float32 only)")
    parser.add_argument("--device", type=process_device_name, default="auto",
                        help="auto, cpu or cuda (both cuda:LOCAL_RANK), cuda:N")


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, add_options)
    rank = int(os.environ.get("RANK", "0"))  # this process's number, from torchrun (else 0)
    main_process = rank == 0  # the one that prints and writes
    with StageRun(__file__, args, main_process=main_process) as run:
        seed_everything(args.seed + rank)  # each process draws its own dropout masks
        device = choose_device(args.device)
        join_process_group(device)
        if main_process:
            print(f"device: {device}; DistributedDataParallel, a group of {dist.get_world_size()}")
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose,
                         announce=main_process)
        model = Net(args.dropout).to(device=device, dtype=DTYPES[args.dtype])  # in place
        model.load_state_dict({name: torch.from_numpy(value)
                               for name, value in reference_params(args.seed).items()})
        model = DistributedDataParallel(model)  # after .to(device): it keeps the model's device
        raw_model = model.module  # the Net itself: what to save and evaluate
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        use_amp = args.amp == "on" and args.dtype == "float32"  # float64 checks round-off
        amp_dtype = autocast_dtype(device)
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
        if main_process:
            print(f"autocast: {str(amp_dtype).removeprefix('torch.') if use_amp else 'off'}")
        train_loader, test_loader, sampler = make_loaders(data, args, device)
        for epoch in range(1, args.epochs + 1):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
            run.start_epoch(epoch, steps=len(train_loader))
            train_one_epoch(model, device, train_loader, criterion, optimizer, autocast, scaler,
                            args, run)
            correct = evaluate(raw_model, device, test_loader, autocast)
            run.end_epoch(correct, data)
            if run.steps == args.max_steps:
                break
        run.save_params(raw_model.state_dict())  # keys without "module."
        dist.destroy_process_group()
    return run.summary


if __name__ == "__main__":
    main()
