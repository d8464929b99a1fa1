"""Stage 8: train and eval modes, dropout to show why they exist, and accuracy per class.

Changes from stage 7:
- Some layers behave differently while training and while evaluating. Dropout is the classic
  one: in training it zeroes each activation with probability p (and scales the rest by
  1/(1-p)), so two forwards of the same batch differ; in evaluation it must do nothing, so
  that a prediction is deterministic and uses the whole network. `model.train()` and
  `model.eval()` set a flag on every submodule that such layers read. (BatchNorm is the other
  classic: batch statistics in training, running averages in evaluation.)
- `Net` gains `nn.Dropout(p)` before fc2 and fc3, set by --dropout. Its default, 0.0, keeps
  the reference configuration, so this stage still computes what every other stage computes.
- `train_one_epoch` starts with `model.train()`; `evaluate` starts with `model.eval()` and
  keeps running under `torch.no_grad()` (since stage 3): eval mode changes what layers do,
  no_grad stops autograd from recording; an evaluation wants both.
- `evaluate` also counts correct predictions per class, and the run ends with the tutorial's
  table of accuracy per class.

Run: python -m stages.stage08_train_eval --epochs 1 --dropout 0.2
"""
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10

from common.cli import non_negative_int, parse_args, probability
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000
NUM_CLASSES = 10


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


def build(params, dtype="float32", dropout=0.0):
    """A Net in `dtype` holding the given weights, and its optimizer, made after it."""
    model = Net(dropout).to(DTYPES[dtype])
    model.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})
    model.opt = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    return model


def forward(model, x):
    return model(torch.as_tensor(x, dtype=next(model.parameters()).dtype))


# ---------------------------------------------------------------- loss and step
criterion = nn.CrossEntropyLoss()


def train_step(model, x, y, lr, momentum):
    """One step of SGD with momentum; returns the loss before the update and the gradients."""
    x, y = torch.as_tensor(x, dtype=next(model.parameters()).dtype), torch.as_tensor(y)
    opt = model.opt
    for group in opt.param_groups:  # where a scheduler would change them, too
        group.update(lr=lr, momentum=momentum)
    opt.zero_grad()  # backward() adds to .grad: clear it before this step's backward
    # forward
    loss = criterion(model(x), y)
    # backward
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}  # no copy: zero_grad() sets .grad to None
    # update
    opt.step()
    return loss.item(), grads


def get_params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------- data
transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


class ArrayDataset(Dataset):
    """uint8 images (N, 32, 32, 3) and labels as a Dataset, transformed like torchvision's CIFAR10."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def make_loaders(data, args):
    if data.root is not None:  # the data came through torchvision: use its Dataset
        train_set = CIFAR10(data.root, train=True, transform=transform)
        test_set = CIFAR10(data.root, train=False, transform=transform)
    else:
        train_set = ArrayDataset(data.train_x, data.train_y, transform)
        test_set = ArrayDataset(data.test_x, data.test_y, transform)
    generator = torch.Generator().manual_seed(args.seed)  # the shuffle order follows --seed
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=generator,
                              num_workers=args.workers)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=args.workers)
    return train_loader, test_loader


# ---------------------------------------------------------------- training and evaluation
def train_one_epoch(model, train_loader, args, run):
    model.train()  # dropout on
    for x, y in run.skip_done(train_loader):
        loss, _ = train_step(model, x, y, args.lr, args.momentum)
        if not run.step(loss):
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, test_loader):
    """Fraction of test images whose highest logit is the true class, overall and per class."""
    model.eval()  # dropout off: every prediction uses the whole network
    correct, total = torch.zeros(NUM_CLASSES), torch.zeros(NUM_CLASSES)
    for x, y in test_loader:
        predicted = forward(model, x).argmax(dim=1)
        correct += torch.bincount(y[predicted == y], minlength=NUM_CLASSES)
        total += torch.bincount(y, minlength=NUM_CLASSES)
    return (correct.sum() / total.sum()).item(), (correct / total.clamp(min=1)).tolist()


def add_options(parser):
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: load in the main process)")
    parser.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout probability before fc2 and fc3 (0: the reference network)")


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, add_options, checkpoints=True)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed)
        model = build(reference_params(args.seed), dtype=args.dtype, dropout=args.dropout)
        print(f"model: {len(list(model.parameters()))} parameter tensors, "
              f"{sum(p.numel() for p in model.parameters()):,} numbers")  # weight and bias of 5 layers
        train_loader, test_loader = make_loaders(data, args)
        run.checkpoint_with(model, model.opt, train_loader.generator)  # what --checkpoint saves and --resume restores
        for _ in run.epochs(len(train_loader)):
            train_one_epoch(model, train_loader, args, run)
            accuracy, per_class = evaluate(model, test_loader)
            run.log_accuracy(accuracy)
        run.log_per_class(per_class, data.classes)
        run.save_params(get_params(model))
    return run.summary


if __name__ == "__main__":
    main()
