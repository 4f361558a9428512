"""ONNX Runtime execution providers by short name (cpu, cuda, tensorrt), with a clear message when
the requested one is not available, and the name of the device it runs on."""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass

from onnxprune.errors import InputError
from onnxprune.model.runtime import onnxruntime


@dataclass(frozen=True)
class ExecutionProvider:
    """One short EP name: the ONNX Runtime provider chain it asks for (preferred first) and the
    device type its tensors live on (for IO binding)."""

    name: str
    providers: tuple[str, ...]
    device_type: str

    @property
    def provider(self) -> str:
        """The ONNX Runtime provider that must actually run the model."""
        return self.providers[0]


EPS: dict[str, ExecutionProvider] = {
    "cpu": ExecutionProvider("cpu", ("CPUExecutionProvider",), "cpu"),
    "cuda": ExecutionProvider("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), "cuda"),
    "tensorrt": ExecutionProvider(
        "tensorrt", ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "cuda"
    ),
}
SHORT_NAMES = {ep.provider: name for name, ep in EPS.items()}
INSTALL_HINT = (
    "the CUDA and TensorRT providers come with onnxruntime-gpu (pip install 'onnxprune[gpu]' "
    "instead of 'onnxprune[cpu]') on a machine with an NVIDIA GPU and its CUDA/TensorRT libraries"
)


def available_providers() -> list[str]:
    """The providers this ONNX Runtime build offers."""
    return list(onnxruntime().get_available_providers())


def describe_available(providers: list[str]) -> str:
    """'cpu (CPUExecutionProvider), AzureExecutionProvider' for a message."""
    return ", ".join(f"{SHORT_NAMES[p]} ({p})" if p in SHORT_NAMES else p for p in providers)


def resolve_ep(name: str, available: list[str] | None = None) -> ExecutionProvider:
    """The execution provider for a short name; InputError when unknown or not available here."""
    ep = EPS.get(str(name).lower())
    if ep is None:
        raise InputError(f"{{ep}} {name}: unknown execution provider; choose one of {', '.join(EPS)}", parameter="ep")
    available = available_providers() if available is None else available
    if ep.provider not in available:
        ort = onnxruntime()
        hint = f"; {INSTALL_HINT}" if ep.device_type == "cuda" else ""
        raise InputError(
            f"execution provider '{ep.name}' ({ep.provider}) is not available in this "
            f"onnxruntime {ort.__version__} build; available: {describe_available(available)}{hint}"
        )
    return ep


def check_session_provider(session, ep: ExecutionProvider) -> None:
    """ONNX Runtime silently falls back to the CPU when a GPU provider cannot start (no GPU, missing
    CUDA libraries): refuse to time that as if it were the requested provider."""
    used = session.get_providers()
    if ep.provider not in used:
        raise InputError(
            f"execution provider '{ep.name}' ({ep.provider}) is installed but could not start "
            f"(no usable GPU or missing CUDA/TensorRT libraries?); the session runs on "
            f"{describe_available(used)}"
        )


@functools.cache
def device_name(device_type: str = "cpu", device_id: int = 0) -> str:
    """The CPU model (from /proc/cpuinfo) or the GPU's name (from nvidia-smi), for cache keys and reports."""
    if device_type == "cpu":
        return _cpu_model()
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or f"{device_type}:{device_id}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
