"""The one trainer of the learned route: the loop (:mod:`.loop`), its settings (:mod:`.config`), its run folder and
resume state (:mod:`.state`) and its weight files and checkpoint folders (:mod:`.checkpoint`). The public names are
the loop's (``from phasestem.learn.trainer import Trainer``)."""
from .loop import (
    CheckpointError,
    Trainer,
    TrainerConfig,
    TrainingDivergedError,
    checkpoint_folder,
    commit_folder,
    load_weights,
    lr_lambda,
    move_to,
    read_safetensors,
    resolve_device,
    resolve_weights_path,
    save_weights,
    seed_everything,
    state_dict_mismatch,
    torch_load,
    verify_checkpoint,
)

__all__ = ["Trainer", "TrainerConfig", "TrainingDivergedError", "CheckpointError", "save_weights", "load_weights",
           "read_safetensors", "torch_load", "resolve_weights_path", "state_dict_mismatch", "commit_folder",
           "checkpoint_folder", "verify_checkpoint", "seed_everything", "move_to", "resolve_device", "lr_lambda"]
