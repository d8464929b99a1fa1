"""The checks, one per function (or lines of main()) an exercise may blank, by the family of the stage."""
from __future__ import annotations

from typing import Callable

from common.tools.exercises.checks.data_and_devices import (check_array_dataset_getitem, check_array_dataset_len,
                                                            check_can_compile, check_choose_device,
                                                            check_gpus_starting_at, check_make_loaders,
                                                            check_make_transform, check_join_process_group)
from common.tools.exercises.checks.handwritten import (check_backward, check_conv2d, check_conv2d_backward,
                                                       check_conv2d_input_backward, check_cross_entropy,
                                                       check_linear_backward, check_max_pool2x2,
                                                       check_max_pool2x2_backward, check_relu_backward)
from common.tools.exercises.checks.mixed_precision import check_autocast_dtype
from common.tools.exercises.checks.modules import (check_evaluate, check_net_forward, check_net_init,
                                                   check_train_one_epoch)
from common.tools.exercises.checks.programs import (check_main_autocast, check_main_compile, check_main_ddp_wrap,
                                                    check_main_sampler_epoch, check_main_wrap, check_program)
from common.tools.exercises.checks.steps import check_forward, check_sgd_momentum_update, check_zero_grad
from common.tools.exercises.checks.together import check_together
from common.tools.exercises.framework import Subject

CHECKS: dict[str, Callable[[Subject, str], None]] = {
    "conv2d": check_conv2d, "conv2d_backward": check_conv2d_backward,
    "conv2d_input_backward": check_conv2d_input_backward, "relu_backward": check_relu_backward,
    "max_pool2x2": check_max_pool2x2, "max_pool2x2_backward": check_max_pool2x2_backward,
    "linear_backward": check_linear_backward, "cross_entropy": check_cross_entropy, "backward": check_backward,
    "sgd_momentum_update": check_sgd_momentum_update, "zero_grad": check_zero_grad, "forward": check_forward,
    "Net.__init__": check_net_init, "Net.forward": check_net_forward, "train_one_epoch": check_train_one_epoch,
    "evaluate": check_evaluate, "make_transform": check_make_transform,
    "ArrayDataset.__len__": check_array_dataset_len, "ArrayDataset.__getitem__": check_array_dataset_getitem,
    "make_loaders": check_make_loaders, "choose_device": check_choose_device,
    "gpus_starting_at": check_gpus_starting_at, "join_process_group": check_join_process_group,
    "autocast_dtype": check_autocast_dtype, "can_compile": check_can_compile,
    "main: the wrap": check_main_wrap, "main: the DDP wrap": check_main_ddp_wrap,
    "main: the sampler's epoch": check_main_sampler_epoch, "main: autocast and the scaler": check_main_autocast,
    "main: compile": check_main_compile,
}
WHOLE = {"all together": check_together, "the whole program": check_program}  # once every blank passes
