"""An emulated Kubernetes cluster for the Kubernetes backend's tests (see ../README.md)."""

from .apiserver import Fault
from .cluster import EmulatedCluster, crd_manifests
from .kubelet import Image, Timing

__all__ = ["EmulatedCluster", "Fault", "Image", "Timing", "crd_manifests"]
