"""Which functions each exercise blanks, and why those."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import CourseError
from common.harness import ROOT, stage_file

WORK_DIR = ROOT / "work"  # the learner's exercises


# ---------------------------------------------------------------- which functions each exercise blanks
@dataclass(frozen=True)
class Exercise:
    # function (or Class.method) -> a few words of the stage's docstring: the sentence holding them is its hint
    blanks: dict[str, str]
    why: str  # why these functions: where the lesson of the diff from the stage before lives


EXERCISES = {
    1: Exercise({"conv2d_backward": "each op has a backward function",
                 "conv2d_input_backward": "each op has a backward function",
                 "relu_backward": "each op has a backward function",
                 "max_pool2x2_backward": "each op has a backward function",
                 "linear_backward": "each op has a backward function",
                 "cross_entropy": "softmax cross-entropy",
                 "backward": "each op has a backward function",
                 "sgd_momentum_update": "buf = momentum * buf + grad"},
                "Stage 1 has no stage before it: its lesson is the gradient written by hand, so every "
                "backward function, the chain rule that links them (backward), the loss with its "
                "gradient and the momentum update are blanked. The forward ops stay: they are what "
                "the backward functions differentiate."),
    2: Exercise(dict.fromkeys(("conv2d", "max_pool2x2", "cross_entropy", "sgd_momentum_update"),
                              "`sliding_window_view` -> `Tensor.unfold`"),
                "Every function changes from numpy to torch. These four together use each twin that is "
                "spelled differently (unfold for sliding_window_view, permute for transpose, "
                "torch.where, max(...).values, clone for copy); the functions left whole show the same "
                "renamings, as examples."),
    3: Exercise({"zero_grad": "`.grad` accumulates",
                 "sgd_momentum_update": "The update runs inside `with torch.no_grad():`",
                 "train_one_epoch": "`loss.backward()` walks that graph"},
                "The lesson is autograd: the step in train_one_epoch now calls loss.backward(), the "
                ".grad it fills must be cleared first (zero_grad), and the update must run under "
                "no_grad. forward, cross_entropy, conv2d and max_pool2x2 only lose what the "
                "hand-written backward needed (the cache, the gradient, the windows, the winners), so "
                "they stay."),
    4: Exercise({"forward": "`F.conv2d`, `F.relu`, `F.max_pool2d` and `F.linear` replace",
                 "train_one_epoch": "`F.cross_entropy` replaces"},
                "forward is where torch.nn.functional replaces the hand-written ops; train_one_epoch "
                "is where F.cross_entropy replaces the hand-written loss."),
    5: Exercise({"Net.__init__": "the layers are made in `__init__`",
                 "Net.forward": "the layers are made in `__init__`",
                 "sgd_momentum_update": "The update loops over `model.named_parameters()`",
                 "train_one_epoch": "`model.zero_grad()`"},
                "The dict of parameters becomes a module: its layers (__init__), its forward, and the "
                "update and loop that now reach the parameters through it. main()'s new lines "
                "(load_state_dict) are what the harness's build() does for every stage, so they stay."),
    6: Exercise({"train_one_epoch": "The step is now the one every PyTorch program writes"},
                "The step every PyTorch program writes (zero_grad, criterion, backward, step) lives in "
                "train_one_epoch. main() builds the criterion and the optimizer as the harness "
                "builds them, so it stays."),
    7: Exercise({"make_transform": "Both apply the tutorial's transform",
                 "ArrayDataset.__len__": "how many samples (`__len__`)",
                 "ArrayDataset.__getitem__": "how many samples (`__len__`)",
                 "make_loaders": "Its shuffle is driven by a `torch.Generator`"},
                "The data pipeline is the lesson: the transform, the two methods every Dataset has, "
                "and the DataLoaders with their seeded shuffle. train_one_epoch and evaluate change "
                "only in what they loop over (a DataLoader), so they stay."),
    8: Exercise({"Net.forward": "`Net` gains `nn.Dropout(p)`",
                 "train_one_epoch": "`train_one_epoch` starts with `model.train()`",
                 "evaluate": "`train_one_epoch` starts with `model.train()`"},
                "Where dropout goes (forward) and when it is on (model.train() in the loop, "
                "model.eval() in evaluate). __init__ keeps its one new line, the nn.Dropout layer, "
                "as a given: rewriting the five layers of stage 5 again teaches nothing new."),
    9: Exercise({"choose_device": "turns it into a `torch.device` once",
                 "train_one_epoch": "hence `x = x.to(device)`",
                 "evaluate": "hence `x = x.to(device)`"},
                "The device is decided once (choose_device) and every batch is moved to it where it "
                "is used (train_one_epoch, evaluate). main() only passes the device on, and "
                "make_loaders only adds pin_memory, so they stay."),
    10: Exercise({"gpus_starting_at": "device_ids[0]"},
                 "The wrap itself is two lines of main(), which no check can call alone; the device "
                 "list it is given is the part that needs thought, since DataParallel gathers on "
                 "device_ids[0]."),
    11: Exercise({"process_group": "the stage makes a group of one process",
                  "choose_device": "The device is `cuda:LOCAL_RANK`",
                  "make_loaders": "A `DistributedSampler` gives each process its own share"},
                 "Joining and leaving the process group, one device per process, and the "
                 "DistributedSampler that gives each process its share. The DDP wrap and the rank-0 "
                 "printing are lines of main(), which no check can call alone, so they stay."),
}


def exercise_for(stage: int) -> Exercise:
    if stage not in EXERCISES:
        raise CourseError(f"no stage {stage}: stages are 1 to {len(EXERCISES)}")
    return EXERCISES[stage]


def work_file(stage: int, work_dir: Path = WORK_DIR) -> Path:
    """The learner's copy: work/stage03_autograd.py for stage 3."""
    return work_dir / stage_file(stage).name
