"""One check of a torch device string, shared by everything that takes ``device=``."""

from __future__ import annotations

from histoguard.errors import ConfigError

_CPU_FIX = "use --device cpu"


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else a ConfigError that says what to do.

    Args:
        device: a torch device string: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns:
        ``device`` unchanged.

    Raises:
        ConfigError: not a device string torch knows, CUDA asked of a torch build or machine
            without it (or a GPU index it does not have), or MPS where it is unavailable.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device {device!r} is not a torch device ({error}); use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no usable GPU"
            raise ConfigError(
                f"device {device!r}: CUDA is not available here ({build}); "
                f"{_CPU_FIX}, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"device {device!r}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; choose one of those or {_CPU_FIX}"
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"device {device!r}: Apple MPS is not available here; {_CPU_FIX} "
                "(or cuda on a machine with an NVIDIA GPU)"
            )
    return device
