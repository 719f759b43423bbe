"""launch/train.py with faults injected from the environment (tests only; the product has no fault hooks).

Run it exactly like launch/train.py (plain python, torchrun, or one process per rank). A rank about to SIGKILL
itself says so on stderr first ("fault: SIGKILL rank r (restart count c) at ..."). Faults, all optional:
  FAULT_RANK=r                       only rank r injects (default: every rank)
  FAULT_ONLY_FIRST_ATTEMPT=1         inject only in the first incarnation of the job: TORCHELASTIC_RESTART_COUNT
                                     unset or 0 (torchrun --max-restarts starts later ones with 1, 2, ...)
  FAULT_KILL_AT=step:micro           SIGKILL this process when micro-batch `micro` (1-based) of training
                                     step `step` is about to run: the step's earlier micro-batches are done
  FAULT_STOP_AT=step:micro           SIGSTOP this process there instead (alive but hung: peers must time out)
  FAULT_KILL_IN_SAVE=when            SIGKILL during the Nth checkpoint save (FAULT_SAVE_INDEX, default 2):
                                     "ds_saved" right after DeepSpeed wrote its files (no state file yet),
                                     "renamed" after the rename to step_N, before `latest` is rewritten
  FAULT_FSIZE_AT_SAVE=n:bytes        before the nth save, limit the size of any file this process writes
                                     (RLIMIT_FSIZE; SIGXFSZ ignored so writes fail with EFBIG)
  FAULT_NAN_LOSS_STEPS=3,5-7         multiply the training loss by NaN at these steps (a real NaN that
                                     flows through backward into the gradients)
  FAULT_NAN_WEIGHT_AT=step           fill one weight with NaN before this step (every later loss is NaN)
  FAULT_DIGEST=path                  append "step sha256-of-all-parameters" after every step to path.rank<r>
"""
from __future__ import annotations

# Only the standard library at module level: torch (imported by install()) must not load before main() has
# set OMP_WAIT_POLICY, as in launch/train.py.
import faulthandler
import hashlib
import importlib.util
import os
import resource
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RANK = int(os.environ.get("RANK", "0"))
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0")
ACTIVE = os.environ.get("FAULT_RANK") in (None, "", str(RANK)) and (
    FIRST_ATTEMPT or os.environ.get("FAULT_ONLY_FIRST_ATTEMPT") in (None, "", "0"))
STATE = {"step": 0, "micro": 0, "in_train": False, "saves": 0}


def _steps(spec: str) -> set[int]:
    out = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _die(where: str) -> None:
    print(f"fault: SIGKILL rank {RANK} (restart count {os.environ.get('TORCHELASTIC_RESTART_COUNT', '-')}) "
          f"{where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


KILL_AT = tuple(int(x) for x in os.environ["FAULT_KILL_AT"].split(":")) if os.environ.get("FAULT_KILL_AT") else None
STOP_AT = tuple(int(x) for x in os.environ["FAULT_STOP_AT"].split(":")) if os.environ.get("FAULT_STOP_AT") else None
NAN_STEPS = _steps(os.environ.get("FAULT_NAN_LOSS_STEPS", ""))
NAN_GRAD_STEPS = _steps(os.environ.get("FAULT_NAN_GRAD_STEPS", ""))
NAN_WEIGHT_AT = int(os.environ.get("FAULT_NAN_WEIGHT_AT", "0"))
DIGEST = os.environ.get("FAULT_DIGEST")
SAVE_INDEX = int(os.environ.get("FAULT_SAVE_INDEX", "2"))
KILL_IN_SAVE = os.environ.get("FAULT_KILL_IN_SAVE")
FSIZE_AT = tuple(int(x) for x in os.environ["FAULT_FSIZE_AT_SAVE"].split(":")) \
    if os.environ.get("FAULT_FSIZE_AT_SAVE") else None


class _KillAfter:
    """Wraps a callable; SIGKILLs the process right after it returns."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *a, **k):
        out = self.fn(*a, **k)
        _die(f"after {getattr(self.fn, '__name__', 'the call')} in save {STATE['saves']}")
        return out


def install() -> None:
    """Patch the trainer, the model builder and the checkpoint saver with the fault hooks (imports torch)."""
    import torch

    import pipeline.model
    import pipeline.train.checkpoint as checkpoint
    import pipeline.train.trainer as trainer_mod

    _train_step = trainer_mod.Trainer.train_step

    def train_step(self, collect):
        STATE.update(step=self.step, micro=0, in_train=True)
        if ACTIVE and NAN_WEIGHT_AT and self.step == NAN_WEIGHT_AT:
            with torch.no_grad():
                next(self.engine.module.parameters()).fill_(float("nan"))
        try:
            result = _train_step(self, collect)
        finally:
            STATE["in_train"] = False
        if DIGEST:
            h = hashlib.sha256()
            for p in self.engine.module.parameters():
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            with open(f"{DIGEST}.rank{RANK}", "a") as f:
                f.write(f"{self.step} {h.hexdigest()}\n")
        return result

    _to_tensors = trainer_mod.to_tensors

    def to_tensors(batch, device):
        if STATE["in_train"]:
            STATE["micro"] += 1
            if ACTIVE and KILL_AT == (STATE["step"], STATE["micro"]):
                _die(f"at step {STATE['step']} micro-batch {STATE['micro']}")
            if ACTIVE and STOP_AT == (STATE["step"], STATE["micro"]):
                os.kill(os.getpid(), signal.SIGSTOP)
        return _to_tensors(batch, device)

    trainer_mod.Trainer.train_step = train_step
    trainer_mod.to_tensors = to_tensors

    _build_model = pipeline.model.build_model

    def build_model(cfg, *args, **kwargs):
        model = _build_model(cfg, *args, **kwargs)

        def nan_loss(module, args, kwargs, output):
            if ACTIVE and module.training and STATE["in_train"] and STATE["step"] in NAN_STEPS:
                output.loss = output.loss * float("nan")
                output.losses = {**output.losses, "loss": output.losses["loss"] * float("nan")}
            return output

        model.register_forward_hook(nan_loss, with_kwargs=True)
        return model

    import pipeline.train.parallel_run as parallel_run
    _prepare = parallel_run.ParallelRun.prepare_model

    def prepare_model(self, model):
        model = _prepare(self, model)   # materialised here: hook the parameters the engine will own
        first = next(p for p in model.parameters() if p.requires_grad)

        def nan_grad(grad):   # a non-finite gradient although the loss is finite
            if ACTIVE and STATE["in_train"] and STATE["step"] in NAN_GRAD_STEPS:
                return grad * float("nan")
            return grad

        first.register_hook(nan_grad)
        return model

    parallel_run.ParallelRun.prepare_model = prepare_model

    pipeline.model.build_model = build_model

    _save = checkpoint.save_checkpoint

    def save_checkpoint(engine, *args, **kwargs):
        STATE["saves"] += 1
        if ACTIVE and FSIZE_AT and STATE["saves"] == FSIZE_AT[0]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_AT[1], FSIZE_AT[1]))
        if ACTIVE and KILL_IN_SAVE and STATE["saves"] == SAVE_INDEX:
            if KILL_IN_SAVE == "ds_saved":
                engine.save_checkpoint = _KillAfter(engine.save_checkpoint)
            elif KILL_IN_SAVE == "renamed":
                checkpoint.fsync_dir = _KillAfter(checkpoint.fsync_dir)
        return _save(engine, *args, **kwargs)

    checkpoint.save_checkpoint = save_checkpoint   # the Trainer calls it through the module


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    faulthandler.register(signal.SIGUSR1)  # a test can ask any rank where it is stuck
    install()
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "launch", "train.py"))
    train_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_cli)
    return train_cli.main()


if __name__ == "__main__":
    sys.exit(main())
