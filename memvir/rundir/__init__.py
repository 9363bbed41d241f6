"""The run folder: both sides of its format (memvir.train writes it, memvir.report and memvir.pipeline read it).

    <save_path>/
      config.json          the resolved config (memvir.config.TrainConfig as a dict), and under "kernels" the CPU
                           kernels it trained with (memvir.portable.describe: mode, capability, caps)
      metrics.json         every evaluation, the best per metric, the last, finished / stopped_early; a MemVir
                           run also full_memory_steps: the training steps that took all N past steps
      steps.csv            one row per step (StepLog.COLUMNS)
      events.out.tfevents* TensorBoard, the official scalar names
      checkpoints/         epoch_NNNNN.pt (the newest max_to_keep) and best_<metric>.pt
      .lock                held (flock) by the one process training here (a regular file; anything else there is
                           refused in one line)

Every file is written by memvir.files.atomic_write (the old file or the new one, never half of one), as every other
file the project writes. One job per file:

    folder.py       the folder itself: its name (run_name), its one owner (RunLock), starting afresh in it
    checkpoints.py  checkpoints/epoch_NNNNN.pt and best_<metric>.pt: written whole, read with tensors only, checked
    history.py      metrics.json: every evaluation, the best per metric, the last
    outputs.py      writing while training: config.json, steps.csv, TensorBoard events
    resume.py       resuming: the same run (flags, data, kernels), the checkpoint restored, the random generators
    reading.py      reading a run folder (the report, the pipeline)
"""
from .checkpoints import (CHECKPOINT_FORMAT, OPTIONAL_FIELDS, TRAINING_FIELDS, CheckpointError, CheckpointRefused,
                          best_path, checkpoint_path, epoch_checkpoints, latest_checkpoint, link_best,
                          load_checkpoint, load_state, save_checkpoint)
from .folder import (CHECKPOINT_FILES, RUN_FILES, RUN_KEYS, RunFolderBusy, RunLock, is_run_config,
                     remove_stale_temporaries, run_folder, run_name, start_afresh)
from .history import BEST_METRICS, check_history, new_history, read_metrics, record_evaluation, repair_metrics
from .outputs import KERNELS_KEY, RunOutputs, StepLog, write_eval_scalars
from .reading import read_run, run_state
from .resume import (Progress, check_same_kernels, check_same_run, data_fingerprint, get_rng_state, restore,
                     restore_newest, set_rng_state)

__all__ = ["run_name", "run_folder", "RunLock", "RunFolderBusy", "remove_stale_temporaries",
           "CHECKPOINT_FORMAT", "BEST_METRICS", "CheckpointError", "CheckpointRefused", "TRAINING_FIELDS",
           "checkpoint_path", "best_path", "epoch_checkpoints", "save_checkpoint", "link_best", "load_checkpoint",
           "load_state", "latest_checkpoint", "new_history", "record_evaluation", "check_history", "read_metrics",
           "repair_metrics", "StepLog", "get_rng_state", "set_rng_state", "run_state", "read_run", "RunOutputs",
           "write_eval_scalars", "check_same_run", "KERNELS_KEY", "is_run_config", "start_afresh",
           "RUN_FILES", "CHECKPOINT_FILES", "RUN_KEYS", "OPTIONAL_FIELDS", "Progress", "check_same_kernels",
           "data_fingerprint", "restore", "restore_newest"]
