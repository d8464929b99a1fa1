"""Stage 9: the device is chosen once, in main(), and the model and each batch move to it.

Changes from stage 8:
- `--device auto` takes this machine's accelerator (CUDA, MPS, XPU, ...) through
  `torch.accelerator`, or the CPU, as a `torch.device` made once and passed down.
- `model.to(device)` moves the model in place, but `x.to(device)` returns a copy: hence
  `x = x.to(device)` in the loop and in `evaluate`.
- On CUDA, pinned batches (`pin_memory=True`) let `non_blocking=True` copies be queued.

Run: python -m stages.stage09_device --epochs 1 --device auto
"""
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
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
    generator = torch.Generator().manual_seed(args.seed)  # the shuffle order follows --seed
    pin_memory = device.type == "cuda"  # page-locked: the copies to the GPU can be queued
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              generator=generator, num_workers=args.workers, pin_memory=pin_memory)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=args.workers,
                             pin_memory=pin_memory)
    return train_loader, test_loader


# ---------------------------------------------------------------- training and evaluation
def show_first_step(loss, conv1_bias_grad):
    """Step 1's loss and conv1's bias gradient: the same numbers in every stage, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten "
               "logits nearly equal); conv1.bias gradient: "
               + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def train_one_epoch(model, device, train_loader, criterion, optimizer, args, run):
    model.train()  # dropout on
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # to the device
        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        run.log_step(loss)
        if run.steps == 1:
            show_first_step(loss, model.conv1.bias.grad)
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, device, test_loader):
    """How many test images are classified correctly."""
    model.eval()  # dropout off: every prediction uses the whole network
    correct = 0
    for x, y in test_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        predicted = model(x).argmax(dim=1)  # the class with the highest logit
        correct += (predicted == y).sum().item()
    return correct


def choose_device(name):
    """auto: this machine's accelerator (CUDA, MPS, XPU, ...) if it has one, else the CPU."""
    if name == "auto":
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    return torch.device(name)


def add_options(parser):
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: the main process)")
    parser.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout before fc2 and fc3 (0: none)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (an accelerator if any), cpu, cuda, cuda:N, mps, ...")


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, add_options)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        device = choose_device(args.device)
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        model = Net(args.dropout).to(device=device, dtype=DTYPES[args.dtype])  # in place
        model.load_state_dict({name: torch.from_numpy(value)
                               for name, value in reference_params(args.seed).items()})
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        train_loader, test_loader = make_loaders(data, args, device)
        for epoch in range(1, args.epochs + 1):
            run.start_epoch(epoch, steps=len(train_loader))
            train_one_epoch(model, device, train_loader, criterion, optimizer, args, run)
            correct = evaluate(model, device, test_loader)
            run.end_epoch(correct, data)
            if run.steps == args.max_steps:
                break
        run.save_params(model.state_dict())
    return run.summary


if __name__ == "__main__":
    main()
