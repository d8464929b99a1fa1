"""Which functions (and which lines of main()) each exercise blanks, why those, and the hint over each."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.errors import CourseError
from common.harness import ROOT, stage_file, stage_files

WORK_DIR = ROOT / "work"  # the learner's exercises


# ---------------------------------------------------------------- which functions each exercise blanks
@dataclass(frozen=True)
class Lines:
    """Statements of a function (main) rather than a whole body: from the statement whose source
    holds `first` to the one that holds `last` (the same statement when `last` is None), in one block."""
    function: str
    first: str
    last: str | None = None


@dataclass(frozen=True)
class Exercise:
    # a function (or Class.method), or a name of `lines` -> its hint: what it must do, and what the check tests
    blanks: dict[str, str]
    why: str  # why these: where the lesson of the diff from the stage before lives
    lines: dict[str, Lines] = field(default_factory=dict)  # the blanks that are lines of main()

    def function_of(self, name: str) -> str:
        """The function a blank lies in: itself, or for lines of main(), "main"."""
        return self.lines[name].function if name in self.lines else name


TRAINING_LOOP_CHECK = ("The check watches the order of these calls and that every .grad is cleared before each "
                       "backward, compares five steps with torch.optim.SGD's, then runs the loop again with "
                       "args.max_steps = 3.")

EXERCISES = {
    1: Exercise({
        "conv2d_backward": "Return the gradients of the weight and of the bias from dout and the windows (cols) "
                           "that the forward kept: dweight is dout's rows (O, N*OH*OW) times cols transposed, "
                           "reshaped to the weight's shape; dbias sums dout over the batch and every position. "
                           "The check compares both with autograd of F.conv2d.",
        "conv2d_input_backward": "Return the gradient of the input: each window's gradient is the weight, as an "
                                 "(O, C*k*k) matrix, transposed times dout's rows; add each back where its window "
                                 "was taken, in a loop over the k*k offsets. The check compares it with autograd "
                                 "of F.conv2d.",
        "relu_backward": "Return dout where the relu's output is positive and 0 elsewhere: the gradient of "
                         "max(x, 0). The check compares it with autograd of F.relu.",
        "max_pool2x2_backward": "Give each window's gradient to the input that won it (winner says which of the "
                                "4) and 0 to the other three: the result has twice dout's height and width. The "
                                "check compares it with autograd of F.max_pool2d on inputs full of ties.",
        "linear_backward": "Return three gradients, in this order: the weight's (dout transposed times x, shape "
                           "(out, in)), the bias's (dout summed over the batch) and the input's (dout times the "
                           "weight). The check compares each with autograd of F.linear.",
        "cross_entropy": "Return two things: the mean softmax cross-entropy of the batch, and its gradient with "
                         "respect to the logits (softmax minus the one-hot labels, divided by the batch size). "
                         "Subtract each row's largest logit before exp(): the check also gives logits in the "
                         "thousands, where exp() overflows otherwise. It compares both with F.cross_entropy and "
                         "its autograd gradient.",
        "backward": "The chain rule from dlogits back to every parameter, op by op in reverse: linear_backward "
                    "of fc3, relu_backward, fc2, relu_backward, fc1, the reshape back to the pooled shape, "
                    "max_pool2x2_backward, relu_backward, conv2d_backward of conv2 and conv2d_input_backward "
                    "into conv1's side, then max_pool2x2_backward, relu_backward and conv2d_backward of conv1. "
                    "Return a dict of the ten gradients under the parameters' names; the check compares each "
                    "with autograd.",
        "sgd_momentum_update": "torch.optim.SGD's rule, for each parameter: the first buffer is a copy of the "
                               "gradient, each later one buf = momentum * buf + grad; then p -= lr * buf, in "
                               "place. The check runs three updates beside torch.optim.SGD fed the same "
                               "gradients: step 1 shows the learning rate, step 2 the momentum."},
        "Stage 1 has no stage before it: its lesson is the gradient written by hand, so every backward "
        "function, the chain rule that links them (backward), the loss with its gradient and the momentum "
        "update are blanked. The forward ops stay: they are what the backward functions differentiate."),
    2: Exercise({
        "conv2d": "Stage 1's convolution with torch's twins: x.unfold(2, k, 1).unfold(3, k, 1) for "
                  "sliding_window_view, permute for transpose. Return the output (N, O, OH, OW) and the windows "
                  "(cols, rows in (C, k, k) order), as stage 1 does; the check compares both with F.conv2d.",
        "max_pool2x2": "Stage 1's pooling with torch.where for np.where: return the pooled output and which of "
                       "the 4 inputs won each window (on ties the first maximum). The check compares the output "
                       "with F.max_pool2d and routes a gradient through the winners.",
        "cross_entropy": "Stage 1's loss in torch: logits.max(dim=1, keepdim=True).values (torch's max returns "
                         "values and indices), the largest logit subtracted before exp(). Return the mean loss and "
                         "its gradient with respect to the logits, in the logits' dtype; the check compares both "
                         "with F.cross_entropy, with logits in the thousands too.",
        "sgd_momentum_update": "Stage 1's update in torch: grad.clone() for copy, then p -= lr * buf in place. "
                               "The check runs three updates beside torch.optim.SGD."},
        "Every function changes from numpy to torch. These four together use each twin that is spelled "
        "differently (unfold for sliding_window_view, permute for transpose, torch.where, max(...).values, "
        "clone for copy); the functions left whole show the same renamings, as examples."),
    3: Exercise({
        "zero_grad": "Clear every parameter's .grad: set it to None (or zero it where it is not None). The check "
                     "calls zero_grad before any backward, when every .grad is still None, and after one, when it "
                     "must leave nothing of that gradient.",
        "sgd_momentum_update": "Stage 2's update, now reading each parameter's own p.grad, inside "
                               "`with torch.no_grad():` (autograd must not record the update, and changing a leaf "
                               "that requires grad in place is an error otherwise). Change each parameter in "
                               "place, so that backward() goes on filling its .grad. The check runs three updates "
                               "beside torch.optim.SGD.",
        "train_one_epoch": "For each batch: zero_grad(params), then loss = cross_entropy(forward(params, x), y), "
                           "loss.backward(), sgd_momentum_update(params, momentum_buffers, args.lr, args.momentum) "
                           "and run.log_step(loss); after step 1, show_first_step(loss, "
                           "params['conv1.bias'].grad); return once run.steps reaches args.max_steps. "
                           + TRAINING_LOOP_CHECK},
        "The lesson is autograd: the step in train_one_epoch now calls loss.backward(), the .grad it fills "
        "must be cleared first (zero_grad), and the update must run under no_grad. forward, cross_entropy, "
        "conv2d and max_pool2x2 only lose what the hand-written backward needed (the cache, the gradient, the "
        "windows, the winners), so they stay."),
    4: Exercise({
        "forward": "The network with F.conv2d, F.relu, F.max_pool2d(..., 2) and F.linear in place of the "
                   "hand-written ops: the same layers in the same order as stage 3. The check compares the logits "
                   "and the gradients autograd derives through them.",
        "train_one_epoch": "Stage 3's loop with F.cross_entropy(forward(params, x), y) as the loss, its default "
                           "reduction (the mean over the batch): zero_grad(params), the loss, loss.backward(), "
                           "sgd_momentum_update(params, momentum_buffers, args.lr, args.momentum), "
                           "run.log_step(loss); show_first_step after step 1; return once run.steps "
                           "reaches args.max_steps. " + TRAINING_LOOP_CHECK},
        "forward is where torch.nn.functional replaces the hand-written ops; train_one_epoch is where "
        "F.cross_entropy replaces the hand-written loss."),
    5: Exercise({
        "Net.__init__": "After super().__init__(), the tutorial's layers as attributes: conv1 = nn.Conv2d(3, 6, 5), "
                        "pool = nn.MaxPool2d(2, 2), conv2 = nn.Conv2d(6, 16, 5), fc1 = nn.Linear(16 * 5 * 5, 120), "
                        "fc2 = nn.Linear(120, 84), fc3 = nn.Linear(84, 10). The check compares the parameters' "
                        "names and shapes, then the forward.",
        "Net.forward": "conv1, relu, pool; conv2, relu, pool; torch.flatten(x, 1); fc1 and fc2, each followed by "
                       "a relu; fc3's output is the logits. The check compares the logits and the gradients "
                       "autograd derives through them.",
        "sgd_momentum_update": "Stage 4's update over model.named_parameters() (their names are the keys of "
                               "momentum_buffers), under torch.no_grad(), each parameter changed in place. The "
                               "check runs three updates beside torch.optim.SGD.",
        "train_one_epoch": "For each batch: model.zero_grad(), then loss = F.cross_entropy(model(x), y), "
                           "loss.backward(), sgd_momentum_update(model, momentum_buffers, args.lr, args.momentum) "
                           "and run.log_step(loss); after step 1, show_first_step(loss, "
                           "model.conv1.bias.grad); return once run.steps reaches args.max_steps. "
                           + TRAINING_LOOP_CHECK},
        "The dict of parameters becomes a module: its layers (__init__), its forward, and the update and loop "
        "that now reach the parameters through it. main()'s new lines (load_state_dict) are what the "
        "harness's build() does for every stage, so they stay."),
    6: Exercise({
        "train_one_epoch": "For each batch, the step every PyTorch program writes: optimizer.zero_grad(), "
                           "loss = criterion(model(x), y) (the logits go in: the loss applies the softmax "
                           "itself), loss.backward(), optimizer.step(); then run.log_step(loss); after "
                           "step 1, show_first_step(loss, model.conv1.bias.grad); return once run.steps reaches "
                           "args.max_steps. "
                           + TRAINING_LOOP_CHECK},
        "The step every PyTorch program writes (zero_grad, criterion, backward, step) lives in "
        "train_one_epoch. main() builds the criterion and the optimizer as the harness builds them, so it "
        "stays."),
    7: Exercise({
        "make_transform": "transforms.Compose of ToTensor() (uint8 (H, W, C) to float32 (C, H, W) in [0, 1]), "
                          "Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) (to [-1, 1]) and ConvertImageDtype(dtype), "
                          "the run's dtype. The check transforms 3 images, in float64 and float32.",
        "ArrayDataset.__len__": "How many samples: the number of labels. The check calls len() on a dataset of "
                                "10 images.",
        "ArrayDataset.__getitem__": "Sample i as a pair: self.transform(self.images[i]) and its label as a Python "
                                    "int. The check compares two samples with the tutorial's transform.",
        "make_loaders": "The transform make_transform(DTYPES[args.dtype]), an ArrayDataset of the training set "
                        "and one of the test set, and two DataLoaders: the training one with "
                        "batch_size=args.batch_size, shuffle=True and generator=torch.Generator().manual_seed("
                        "args.seed), so that the order follows --seed; the test one in order, in batches of "
                        "EVAL_BATCH_SIZE; both with num_workers=args.workers. Return both. The check compares "
                        "every batch's images, and their order, with PyTorch's shuffle from the same seed."},
        "The data pipeline is the lesson: the transform, the two methods every Dataset has, and the "
        "DataLoaders with their seeded shuffle. train_one_epoch and evaluate change only in what they loop "
        "over (a DataLoader), so they stay."),
    8: Exercise({
        "Net.forward": "Stage 7's forward with self.dropout on the outputs of fc1's and fc2's relus, so before fc2 "
                       "and before fc3. The check runs Net(0.5): in train mode two forwards differ and match "
                       "dropout drawn from the same seed; in eval mode the logits are the network's own.",
        "train_one_epoch": "model.train() first (evaluate() leaves the model in eval mode), then stage 7's loop: "
                           "optimizer.zero_grad(), loss = criterion(model(x), y), loss.backward(), "
                           "optimizer.step(), run.log_step(loss); show_first_step(loss, "
                           "model.conv1.bias.grad) after step 1; return once run.steps reaches args.max_steps. "
                           "The check hands it a model in eval mode and watches the mode at every forward, the "
                           "order of the calls and the clearing of .grad, and compares five steps with "
                           "torch.optim.SGD's.",
        "evaluate": "model.eval() first (dropout off), then for each test batch the predicted class, "
                    "model(x).argmax(dim=1); return how many are correct, as an int. The check hands it a model "
                    "in train mode with dropout 0.5 and watches the mode at every forward."},
        "Where dropout goes (forward) and when it is on (model.train() in the loop, model.eval() in "
        "evaluate). __init__ keeps its one new line, the nn.Dropout layer, as a given: rewriting the five "
        "layers of stage 5 again teaches nothing new."),
    9: Exercise({
        "choose_device": "'auto': this machine's accelerator, torch.accelerator.current_accelerator("
                         "check_available=True), or torch.device('cpu') when it has none; any other name: "
                         "torch.device(name). Return a torch.device, never a string. The check pretends a "
                         "machine without an accelerator, one with CUDA GPUs and one with MPS; for 'cuda', "
                         "torch.device('cuda') and torch.device('cuda:0') both pass.",
        "train_one_epoch": "Stage 8's loop (model.train(), optimizer.zero_grad(), loss = criterion(model(x), y), "
                           "loss.backward(), optimizer.step(), run.log_step(loss), show_first_step after "
                           "step 1, return at args.max_steps), with each batch moved where the model is first: "
                           "x, y = x.to(device), y.to(device) (non_blocking=True may be added). Tensor.to returns "
                           "a copy, so assign it. The check hands the loop batches on a watched host device and "
                           "sees whether the model and the loss compute with the moved copies.",
        "evaluate": "Stage 8's evaluate (model.eval(), the predictions model(x).argmax(dim=1), the count correct "
                    "as an int), with each test batch moved first: "
                    "x, y = x.to(device), y.to(device). The check hands it batches on a watched host device and "
                    "sees whether the model and the comparison with y use the moved copies."},
        "The device is decided once (choose_device) and every batch is moved to it where it is used "
        "(train_one_epoch, evaluate). main() only passes the device on, and make_loaders only adds "
        "pin_memory, so they stay."),
    10: Exercise({
        "gpus_starting_at": "The index of every visible GPU, torch.cuda.device_count() of them, the model's own "
                            "first: DataParallel requires the parameters on device_ids[0] and gathers there. "
                            "torch.device('cuda') has no index: it means the current GPU, 0. The check pretends "
                            "4 GPUs and asks for cuda, cuda:0 and cuda:2.",
        "main: the wrap": "When data_parallel: model = nn.DataParallel(model, device_ids=gpus_starting_at(device)), "
                          "after .to(device) and before the optimizer; raw_model is the Net inside, model.module, "
                          "when wrapped, and the model itself when not: it is what save_params gets, so that the "
                          "saved names have no \"module.\" in front. The check runs your main() "
                          "with --data-parallel beside the course's, and watches what the loop gets and what is "
                          "saved."},
        "The lesson is the wrap in main() and the device list it is given: DataParallel gathers on "
        "device_ids[0], so the model's own GPU comes first, and the Net inside the wrapper is what is saved.",
        {"main: the wrap": Lines("main", "if data_parallel:", "raw_model = ")}),
    11: Exercise({
        "join_process_group": "Join the group: the backend dist.get_default_backend_for_device(device) (nccl "
                              "for CUDA, gloo for the CPU), and on an accelerator "
                              "torch.accelerator.set_device_index(device) first; under torchrun (RANK in the "
                              "environment) dist.init_process_group(backend), under plain python a group of one, "
                              "dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1). "
                              "main() leaves it at its end. The check runs it under plain python.",
        "choose_device": "'auto': this machine's accelerator's type (torch.accelerator), else 'cpu'; then 'cpu' "
                         "or a name with its number (cuda:1) as it is, and an accelerator without a number the one "
                         "of this process, numbered by the environment's LOCAL_RANK (0 when unset). Return a "
                         "torch.device. The check runs it as the process of LOCAL_RANK 1, with and without GPUs.",
        "make_loaders": "Stage 10's datasets (make_transform(DTYPES[args.dtype]), an ArrayDataset of each set); "
                        "a DistributedSampler(train_set, shuffle=True, seed=args.seed) gives this process its "
                        "share of the training set; the test set becomes Subset(test_set, range(dist.get_rank(), n, "
                        "dist.get_world_size())); the training DataLoader takes sampler=sampler (no shuffle of its "
                        "own), the test one batches of EVAL_BATCH_SIZE; return the two loaders and the sampler. "
                        "The check runs it as rank 1 of a pretended group of 2, then calls set_epoch(1).",
        "evaluate": "model.eval(); count the correct predictions of this process's share in a tensor on the "
                    "device; dist.all_reduce(correct) sums the counts of every process; return the sum as an "
                    "int. The check pretends another process that counted 7.",
        "main: the DDP wrap": "model = DistributedDataParallel(model), after .to(device) and load_state_dict "
                              "and before the optimizer (DDP keeps the model's own device); raw_model = "
                              "model.module, the Net itself, is what evaluate and save_params get. The check runs your main() beside the course's and watches what "
                              "the loop gets and what is saved.",
        "main: the sampler's epoch": "sampler.set_epoch(epoch) at the start of each epoch, before its batches are "
                                     "drawn: a DistributedSampler shuffles by its seed plus the epoch, so "
                                     "without it every epoch repeats the first one's order. The check runs three "
                                     "epochs beside the course's and compares the order of the batches."},
        "Joining and leaving the process group, one device per process, the DistributedSampler that gives "
        "each process its share, the all-reduced count, and the two lines of main() that are the lesson: the "
        "DDP wrap and the sampler's epoch.",
        {"main: the DDP wrap": Lines("main", "model = DistributedDataParallel(", "raw_model = model.module"),
         "main: the sampler's epoch": Lines("main", "sampler.set_epoch(epoch)")}),
    12: Exercise({
        "autocast_dtype": "torch.bfloat16, except on a CUDA device without it (torch.cuda.is_bf16_supported() "
                          "False): torch.float16. The check asks for the CPU and for pretended GPUs with and "
                          "without bfloat16.",
        "train_one_epoch": "Stage 11's loop with the forward and the loss, loss = criterion(model(x), y), under "
                           "`with autocast:`, and after it "
                           "scaler.scale(loss).backward() outside the with block, scaler.step(optimizer) (it "
                           "unscales the gradients, and skips a step whose gradients hold inf) and "
                           "scaler.update(); model.train() first, optimizer.zero_grad(), run.log_step(loss, "
                           "model), show_first_step after step 1 (rank 0 only: run.main_process), return at "
                           "args.max_steps. The check watches each layer's dtype and the loss's, that the "
                           "backward runs outside autocast, and runs the loop with float16 and a GradScaler that "
                           "acts, beside the course's.",
        "evaluate": "Stage 11's evaluate with the forward under `with autocast:`: model.eval(), this share's "
                    "correct predictions counted in a tensor on the device, dist.all_reduce(correct), the sum as "
                    "an int. The check watches the layers' dtypes and pretends another process that counted 7.",
        "main: autocast and the scaler": "use_amp = args.amp == 'on' and args.dtype == 'float32'; amp_dtype = "
                                         "autocast_dtype(device); autocast = torch.autocast(device.type, "
                                         "dtype=amp_dtype, enabled=use_amp); scaler = torch.amp.GradScaler("
                                         "device.type, enabled=use_amp and amp_dtype == torch.float16). The "
                                         "check runs your main() with --amp on, with --amp off, and as on a GPU "
                                         "without bfloat16, and watches the layers' dtypes and the scaler."},
        "Mixed precision: the dtype autocast uses, the step under autocast with the GradScaler, the "
        "evaluation under autocast, and main()'s lines that build the autocast context and the scaler.",
        {"main: autocast and the scaler": Lines("main", "use_amp = ", "scaler = torch.amp.GradScaler(")}),
    13: Exercise({
        "can_compile": "On a CPU, inductor writes C++, so a CPU run can compile only when a C++ compiler is found: "
                       "$CXX, g++ or clang++ (shutil.which); on any other device, True. The check hides and shows "
                       "compilers on the PATH.",
        "main: compile": "If args.compile is 'on' and not can_compile(device): print why, and run eager. Else, if "
                         "args.compile is 'on': model.compile(), in place, before the DDP wrap. The "
                         "check runs your main() with --compile on and off beside the course's, watching (not "
                         "running) the compile: which module is compiled, and when."},
        "torch.compile is two lines of main(), in their place: before the DDP wrap, in place, and only where "
        "inductor can compile; can_compile says where that is.",
        {"main: compile": Lines("main", 'if args.compile == "on" and not can_compile(device):', "model.compile()")}),
}


def exercise_for(stage: int) -> Exercise:
    if stage not in EXERCISES:
        raise CourseError(f"no stage {stage}: stages are 1 to {len(stage_files())}")
    return EXERCISES[stage]


def work_file(stage: int, work_dir: Path = WORK_DIR) -> Path:
    """The learner's copy: work/stage03_autograd.py for stage 3."""
    return work_dir / stage_file(stage).name
